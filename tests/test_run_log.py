"""Run logging (bcrdist.train.run_log): metrics.jsonl, metrics.csv and TensorBoard event files, written by
rank 0 only, and read back with the csv module and TensorBoard's own event reader."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys

import pytest

from bcrdist.errors import ConfigError
from bcrdist.train.run_log import RunLogger


def record(step: int, val_error: float, **extra) -> dict:
    """A record with the fields the trainer logs after each evaluation."""
    r = {"phase": "pretrain", "stage": 0, "epoch": step // 10, "step": step, "lr": 1e-3, "global_batch": 16,
         "train_loss": 0.5 / (1 + step), "val_error": val_error, "val_error_aux": val_error + 0.1,
         "val_error_max": 2 * val_error, "train_subset_error": None, "best_error": val_error, "improved": True,
         "samples_per_s": 1000.0, "data_wait_share": 0.05, "wall_time": 1_700_000_000.0 + step}
    r.update(extra)
    return r


def test_jsonl_and_csv_hold_the_same_records(tmp_path):
    log = RunLogger(tmp_path, enabled=True)
    log.metrics(record(10, 0.5))
    log.metrics(record(20, float("nan")))
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv", newline="")))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert list(rows[0]) == list(record(0, 0.0))                  # the columns, in the trainer's order
    assert [int(r["step"]) for r in rows] == [10, 20] == [line["step"] for line in lines]
    assert float(rows[0]["val_error"]) == 0.5 and rows[0]["train_subset_error"] == ""
    assert rows[1]["val_error"] == "" and lines[1]["val_error"] is None       # non-finite → empty / null
    assert rows[0]["improved"] == "True" and rows[0]["phase"] == "pretrain"


def test_a_resumed_run_appends_rows_under_the_existing_header(tmp_path):
    RunLogger(tmp_path, enabled=True).metrics(record(10, 0.5))
    again = RunLogger(tmp_path, enabled=True)
    again.metrics(record(20, 0.4, extra_field=1.0))               # a key the header lacks is left out
    text = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(text) == 3 and text[0].startswith("phase,stage,epoch,step")
    rows = list(csv.DictReader(text))
    assert [float(r["val_error"]) for r in rows] == [0.5, 0.4] and "extra_field" not in rows[1]


def test_other_ranks_write_nothing(tmp_path):
    log = RunLogger(tmp_path, enabled=False, tensorboard=importlib.util.find_spec("tensorboard") is not None)
    log.metrics(record(10, 0.5))
    log.info("hello")
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_without_the_package_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)         # how Python marks a module as unavailable
    with pytest.raises(ConfigError, match=r"logging.tensorboard.*pip install 'bcrdist\[tensorboard\]'"):
        RunLogger(tmp_path, enabled=False, tensorboard=True)     # on every rank, not only rank 0
    RunLogger(tmp_path, enabled=True, tensorboard=False).metrics(record(10, 0.5))


def scalars(directory) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed")
def test_tensorboard_event_files_read_back_with_tensorboards_reader(tmp_path):
    log = RunLogger(tmp_path, enabled=True, tensorboard=True)
    for step, err in ((10, 0.5), (20, 0.4), (30, 0.3)):
        log.metrics(record(step, err))
    log.close()
    got = scalars(tmp_path / "tensorboard")
    assert set(got) == {"lr", "global_batch", "train_loss", "val_error", "val_error_aux", "val_error_max",
                        "best_error", "samples_per_s", "data_wait_share"}
    assert got["val_error"] == [(10, 0.5), (20, pytest.approx(0.4)), (30, pytest.approx(0.3))]
    assert got["train_loss"][0] == (10, pytest.approx(0.5 / 11))

    # a run resumed from a checkpoint at step 15 logs steps 20 and 30 again: TensorBoard keeps the new ones
    resumed = RunLogger(tmp_path, enabled=True, tensorboard=True)
    resumed.metrics(record(20, 0.25))
    resumed.metrics(record(30, float("nan")))
    resumed.close()
    got = scalars(tmp_path / "tensorboard")
    assert [s for s, _ in got["val_error"]] == [10, 20, 30]
    assert got["val_error"][1] == (20, pytest.approx(0.25)) and math.isnan(got["val_error"][2][1])
