"""Checkpoints written by the 0.1 format (tests/fixtures/checkpoint-v1, made by the code before the
checkpoint registry) still load: best.pt predicts what the old code predicted, and last.pt resumes to the
numbers the old code reached when it resumed the same file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import bcrdist
from bcrdist.config import load_config
from bcrdist.models.checkpoint import load_checkpoint, load_model
from bcrdist.train.config import TrainConfig
from bcrdist.train.state import TRAINING_FORMAT, upgrade_training_state
from train_helpers import planned_trainer

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "checkpoint-v1"



def test_fixture_is_the_old_format():
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(FIXTURE / name)["format"] == "bcrdist-checkpoint-1"


def test_old_best_pt_reproduces_the_old_prediction():
    ref = np.load(FIXTURE / "reference_prediction.npz")
    for model in (load_model(FIXTURE / "best.pt"), bcrdist.load_model(FIXTURE / "best.pt")):
        np.testing.assert_allclose(model.predict_eta(ref["measure"]), ref["eta"], rtol=1e-6, atol=1e-6)


def test_old_last_pt_converts_to_the_registry_layout():
    old = load_checkpoint(FIXTURE / "last.pt")
    new = upgrade_training_state(old, FIXTURE / "last.pt")
    assert new["format"] == TRAINING_FORMAT
    assert {"model", "best_model", "optimizer", "scaler", "progress", "tracker", "data", "reader", "rng"} <= set(new)
    position = dict(old["position"])
    # the batch counter becomes the reader's position: a position-only state
    assert new["reader"] == {"epoch": position["epoch"], "batch": position.pop("batch")}
    assert new["progress"] == {**position, "lr": old["lr"], "nan_failures": old["nan_failures"]}
    # the tracker's state only: its configuration comes from the resuming run's config
    assert set(new["tracker"]) == {"best_err", "best_parts", "best_epoch", "best_epoch_update", "history"}
    assert set(new["rng"]) == {"torch"}
    assert new["model"] is old["model"] and new["best_model"] is old["best_model"]


def test_resuming_old_last_pt_reproduces_the_old_resumed_run(tmp_path):
    shutil.copytree(FIXTURE / "data", tmp_path / "data")
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE / "last.pt", run_dir / "checkpoints" / "last.pt")
    cfg = load_config(FIXTURE / "config.yaml", TrainConfig,
                      [f"run_dir={run_dir}", f"data.path={tmp_path / 'data'}", "checkpoint.resume=auto",
                       "schedule.max_steps=20", "runtime.device=cpu"])
    results = planned_trainer(cfg).run()
    expected = json.loads((FIXTURE / "resumed_to_20.json").read_text())
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert results["steps"] == expected["steps"] == 20
    # exact on the machine that made the fixture; 1e-6 leaves room for other BLAS builds
    assert results["errors"]["val"]["weighted"]["mean"] == pytest.approx(expected["val_weighted_mean"], rel=1e-6)
    assert results["errors"]["test"]["weighted"]["mean"] == pytest.approx(expected["test_weighted_mean"], rel=1e-6)
    assert results["best_selection_error"] == pytest.approx(expected["best_selection_error"], rel=1e-6)
    # the resumed run writes the new format
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["format"] == TRAINING_FORMAT
