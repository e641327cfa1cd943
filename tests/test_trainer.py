"""The trainer's use of the state registry, in process with real data: a resume restores the saved state
under the resuming config's rules, refuses other data, and restores every generator."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bcrdist.config import load_config
from bcrdist.errors import DataError
from bcrdist.models.checkpoint import load_checkpoint
from bcrdist.train.config import TrainConfig
from bcrdist.train.trainer import Trainer, TrainingDiverged
from train_helpers import make_dataset, planned_trainer, write_config

SHORT = {"max_steps": 7, "pretrain_stages": [[1, 1.0]], "finetune": False, "patience": 10,
         "rel_threshold": 1e-3}



def trainer(path: Path, *overrides: str) -> Trainer:
    return planned_trainer(load_config(path, TrainConfig, list(overrides)))


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


def test_the_run_records_its_provenance(stopped_run, data):
    """results.json, last.pt and best.pt name the data set, the config's hash and bcrdist's version."""
    from bcrdist.data.format import read_manifest
    from bcrdist.train.provenance import config_sha256

    cfg = load_config(stopped_run, TrainConfig)
    run = Path(cfg.run_dir)
    results = json.loads((run / "results.json").read_text())["provenance"]
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(run / "checkpoints" / name)["provenance"] == results, name
    assert results["dataset_id"] == read_manifest(data).dataset_id
    assert results["config_sha256"] == config_sha256(cfg)
    assert results["bcrdist_version"] and isinstance(results["torch_version"], str)


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


def test_results_json_psnr_with_min(stopped_run):
    results = json.loads((Path(load_config(stopped_run, TrainConfig).run_dir) / "results.json").read_text())
    for split in ("val", "test"):
        psnr = results["errors"][split]["psnr"]
        assert set(psnr) == {"mean", "std", "min", "count", "pixel_max"}
        assert psnr["min"] <= psnr["mean"] and psnr["pixel_max"] == 2.0


# ------------------------------------------------------------------ issue 12 case 4/5: nothing non-finite passes


def dataset_with_nan(root: Path, dataset: str, split: str, position: int = 3) -> tuple[Path, int]:
    """The module's data set with one NaN in `dataset` of the `position`-th sample of `split`; its index."""
    from bcrdist.data.format import read_manifest, write_manifest, write_shard
    from bcrdist.data.splits import load_split, write_splits
    from bcrdist.data.stats import store_statistics
    import h5py

    src = make_dataset(root / "clean", n=120, per_shard=40, val=12)
    sample = int(load_split(read_manifest(src), split)[position])
    out = root / "nan"
    infos = []
    for shard, first in enumerate(range(0, 120, 40)):
        with h5py.File(src / f"shard-{shard:05d}.h5") as f:
            arrays = {name: f[name][()] for name in ("measure", "measure_imag", "coe")}
        if first <= sample < first + 40:
            arrays[dataset][sample - first, 1, 2] = np.nan
        infos.append(write_shard(out, shard, first, arrays))
    write_manifest(out, infos, provenance={"tool": "tests/test_trainer.py"})
    store_statistics(out)
    write_splits(out, 0.75, val=12)
    return out, sample


def config_on(data_dir: Path, tmp_path: Path) -> Path:
    return write_config(tmp_path / "c.yaml", data_dir, tmp_path / "run", schedule=SHORT,
                        data={"path": str(data_dir), "n_valid": 12})


def test_a_nan_training_target_stops_at_its_first_step_naming_the_sample(tmp_path):
    """Was: 'training diverged' after max_nan_failures rollbacks (4 epochs), no sample named."""
    data_dir, sample = dataset_with_nan(tmp_path, "coe", "train", position=5)
    t = trainer(config_on(data_dir, tmp_path))
    with pytest.raises(DataError) as err:
        t.run()
    message = str(err.value)
    assert "\n" not in message and re.search(rf"\b{sample}\b", message), message
    assert t.progress.nan_failures == 0            # no rollback: corrupt data is not divergence
    assert t.progress.step < t.data.train_steps(8), "not stopped in the epoch that met the sample"
    assert not (tmp_path / "run" / "results.json").exists()


def test_check_batch_names_the_step_and_the_samples(stopped_run):
    t = trainer(stopped_run)
    x, y = torch.ones(4, 16, 8), torch.ones(4, 16, 6)
    t.check_batch(t.stages[0], x, y, torch.tensor([3, 4, 5, 6]))           # finite: divergence, not data
    x[1, 2, 3], y[3, 0, 0] = float("nan"), float("inf")
    t.progress.step = 11
    with pytest.raises(DataError, match=r"non-finite training inputs of samples 4 and targets of samples 6 "
                                        r"\(step 12, pretrain-0, epoch 1\)"):
        t.check_batch(t.stages[0], x, y, torch.tensor([3, 4, 5, 6]))


def test_a_nan_validation_input_stops_the_run_naming_the_split_and_sample(tmp_path):
    """Was: best.pt never written, the final model the initial weights, exit 0. (The reader refuses the sample
    as it is read; the trainer's own check, for what a reader lets through, is the test below.)"""
    data_dir, sample = dataset_with_nan(tmp_path, "measure", "val", position=2)
    t = trainer(config_on(data_dir, tmp_path))
    with pytest.raises(DataError) as err:
        t.run()
    message = str(err.value)
    assert "\n" not in message and re.search(rf"\b{sample}\b", message), message
    assert not (tmp_path / "run" / "results.json").exists()


def test_non_finite_predictions_stop_the_run_instead_of_keeping_stale_weights(stopped_run):
    t = trainer(stopped_run)
    with torch.no_grad():
        next(t.model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"val split 'val' after epoch 3: the model's predictions are not "
                                               r"finite for samples \d+, .* \(12 samples\) \(the data are finite\); "
                                               r"best weights \(epoch \d+\) in .*best.pt"):
        t.evaluate("pretrain", "after epoch 3")
