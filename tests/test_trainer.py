"""The trainer's use of the state registry, in process with real data: a resume restores the saved state
under the resuming config's rules, refuses other data, and restores every generator."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bcrdist.config import load_config
from bcrdist.distributed.launch_env import LaunchEnv
from bcrdist.distributed.process_group import DistContext
from bcrdist.errors import DataError
from bcrdist.models.checkpoint import load_checkpoint
from bcrdist.train.config import TrainConfig
from bcrdist.train.trainer import Trainer
from train_helpers import make_dataset, write_config

SHORT = {"max_steps": 7, "pretrain_stages": [[1, 1.0]], "finetune": False, "patience": 10,
         "rel_threshold": 1e-3}


def one_process() -> DistContext:
    return DistContext(LaunchEnv("single", 0, 1, 0), torch.device("cpu"))


def trainer(path: Path, *overrides: str) -> Trainer:
    return Trainer(load_config(path, TrainConfig, list(overrides)), one_process())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", n=120, per_shard=40, val=12)


@pytest.fixture(scope="module")
def stopped_run(data, tmp_path_factory) -> Path:
    """A run stopped by schedule.max_steps: run_dir with checkpoints/last.pt."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = write_config(tmp / "c.yaml", data, tmp / "run", schedule=SHORT,
                       data={"path": str(data), "n_valid": 12})
    trainer(cfg).run()
    return cfg


def test_resume_keeps_the_resuming_configs_tracker_rules(stopped_run):
    saved = load_checkpoint(Path(load_config(stopped_run, TrainConfig).run_dir) / "checkpoints" / "last.pt")
    t = trainer(stopped_run, "schedule.patience=3", "schedule.rel_threshold=0.05", "schedule.reduce_lr=true",
                "schedule.patience_lr=2", "schedule.reduce_lr_factor=0.25", "optim.lr=2e-3")
    t.resume(Path(t.cfg.run_dir) / "checkpoints" / "last.pt")
    tr = t.tracker
    assert (tr.patience, tr.rel_threshold, tr.reduce_lr, tr.patience_lr, tr.factor) == (3, 0.05, True, 2, 0.25)
    assert tr.min_lr == pytest.approx(2e-3 / 100)
    assert tr.state_dict() == saved["tracker"] and tr.history
    assert t.progress.state_dict() == saved["progress"] and t.progress.step == 7


def test_resume_restores_every_generator(stopped_run):
    saved = load_checkpoint(Path(load_config(stopped_run, TrainConfig).run_dir) / "checkpoints" / "last.pt")
    t = trainer(stopped_run)
    np.random.seed(123)
    t.resume(Path(t.cfg.run_dir) / "checkpoints" / "last.pt")
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert np.array_equal(np.random.get_state()[1], saved["rng"]["numpy"]["keys"].numpy().astype(np.uint32))
    assert list(random.getstate()[1]) == saved["rng"]["python"]["internal"]


def test_resume_on_other_data_is_refused(stopped_run, tmp_path):
    other = make_dataset(tmp_path / "other", n=120, per_shard=40, val=12, seed=5)
    t = trainer(stopped_run, f"data.path={other}")
    with pytest.raises(DataError, match="trained on other data: dataset_id"):
        t.resume(Path(t.cfg.run_dir) / "checkpoints" / "last.pt")


def test_results_report_psnr_with_min(stopped_run):
    results = json.loads((Path(load_config(stopped_run, TrainConfig).run_dir) / "results.json").read_text())
    for split in ("val", "test"):
        psnr = results["errors"][split]["psnr"]
        assert set(psnr) == {"mean", "std", "min", "count"}
        assert psnr["min"] <= psnr["mean"]
