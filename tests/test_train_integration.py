"""End-to-end training tests with real HDF5 data, real torchrun / mpiexec processes and real checkpoints."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import bcrdist
from bcrdist.models.checkpoint import load_checkpoint
from train_helpers import (BIN, ROOT, assert_same_weights, bcrdist as run_bcrdist, bcrnet_model, clean_env,
                           final_weights, kill_training_at_step, make_dataset, torchrun, write_config)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds")


def test_single_process_run_produces_every_artefact(data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", data, run_dir)
    run_bcrdist("train", "--config", str(cfg))
    for name in ("config.yaml", "train.log", "metrics.jsonl", "results.json", "checkpoints/best.pt",
                 "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]          # stages [0,2), [2,3), finetune [3,5)
    assert rows[-1]["val_error"] < rows[0]["val_error"]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["errors"]["test"]["weighted"]["count"] == 60
    assert results["stop_reason"] == "schedule complete"
    assert (tmp_path / "results.tsv").read_text().count("\n") == 2  # header + one row

    ck = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ck["model"])

    # evaluation: exact metrics, predictions file and plots
    out = tmp_path / "eval"
    r = run_bcrdist("evaluate", "--checkpoint", str(run_dir / "checkpoints/best.pt"), "--data", str(data),
                    "--split", "test", "--out", str(out))
    assert "radius-weighted relative error" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["weighted"]["count"] == 60
    assert abs(metrics["weighted"]["mean"] - results["errors"]["test"]["weighted"]["mean"]) < 1e-6
    # one summary layout: the worst PSNR is `min` in results.json and in metrics.json alike
    assert set(results["errors"]["test"]["psnr"]) == set(metrics["psnr"]) == {"mean", "std", "min", "count", "pixel_max"}
    for key in ("mean", "min"):
        assert abs(metrics["psnr"][key] - results["errors"]["test"]["psnr"][key]) < 1e-4
    for name in ("samples.png", "error_histogram.png", "training_curves.png", "predictions.h5"):
        assert (out / name).is_file(), name
    with h5py.File(out / "predictions.h5") as f:
        assert f["pred"].shape == f["output"].shape == (60, 16, 6)

    # inference API: two lines from a checkpoint to η in physical units
    model = bcrdist.load_model(run_dir / "checkpoints/best.pt")
    with h5py.File(data / "shard-00004.h5") as f:
        measure, coe = f["measure"][:10], f["coe"][:10]
    eta = model.predict_eta(measure)
    assert eta.shape == coe.shape
    with h5py.File(out / "predictions.h5") as f:
        index = f["index"][()]
        pred_eta = f["pred_eta"][()]
    k = list(index).index(200)                                       # sample 200 = first of shard 4
    np.testing.assert_allclose(eta[0], pred_eta[k], rtol=1e-5, atol=1e-6)

    # predict CLI on an original-layout file
    src = tmp_path / "in.h5"
    with h5py.File(src, "w") as f:
        f["measure"] = measure
    run_bcrdist("predict", "--checkpoint", str(run_dir / "checkpoints/best.pt"), "--input", str(src),
                "--out", str(tmp_path / "pred.h5"))
    with h5py.File(tmp_path / "pred.h5") as f:
        np.testing.assert_allclose(f["pred"][()], eta, rtol=1e-5, atol=1e-6)


def test_two_ranks_equal_one_rank_with_the_same_global_batch(data, tmp_path):
    """DDP with 2 gloo ranks × 4 samples = 1 rank × 8 samples, step for step (same global batches)."""
    sched = {"max_steps": 12, "pretrain_stages": [[1, 1.0]], "finetune": False}
    one = write_config(tmp_path / "one.yaml", data, tmp_path / "one", schedule=sched)
    two = write_config(tmp_path / "two.yaml", data, tmp_path / "two", schedule=sched)
    run_bcrdist("train", "--config", str(one))
    torchrun(2, "train", "--config", str(two))
    assert load_checkpoint(tmp_path / "two/checkpoints/last.pt")["world_size"] == 2
    assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"), atol=1e-5)


def test_sigkill_and_resume_auto_equals_uninterrupted(data, tmp_path):
    sched = {"pretrain_stages": [[1, 1.0], [2, 0.5]], "finetune_stages": [[2, 1.0]]}
    full = write_config(tmp_path / "full.yaml", data, tmp_path / "full", schedule=sched,
                        checkpoint={"every_steps": 4})
    part = write_config(tmp_path / "part.yaml", data, tmp_path / "part", schedule=sched,
                        checkpoint={"every_steps": 4})
    run_bcrdist("train", "--config", str(full))
    killed_at = kill_training_at_step(part, tmp_path / "part", 8)
    assert killed_at["step"] < 60, "the run finished before it was killed"
    run_bcrdist("train", "--config", str(part), "--resume", "auto")
    assert "resumed from" in (tmp_path / "part/train.log").read_text()
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "part"), atol=1e-6)
    a = json.loads((tmp_path / "full/results.json").read_text())["errors"]["test"]["weighted"]["mean"]
    b = json.loads((tmp_path / "part/results.json").read_text())["errors"]["test"]["weighted"]["mean"]
    assert abs(a - b) < 1e-6


def test_mpiexec_two_ranks_with_early_stopping_and_reduce_lr_finish(data, tmp_path):
    """Patience 1 and reduce-LR make rank-0 decisions every epoch; a rank waiting alone would hang."""
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run",
                       schedule={"epochs": 3, "patience": 1, "reduce_lr": True, "patience_lr": 1,
                                 "rel_threshold": 0.5, "pretrain_stages": [[1, 1.0]], "finetune": False})
    r = subprocess.run([str(BIN / "mpiexec"), "-n", "2", sys.executable, "-m", "bcrdist", "train", "--config",
                        str(cfg)], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    log = (tmp_path / "run/train.log").read_text()
    assert "2 rank(s) via mpi" in log
    assert "early stop" in log or "reduce lr" in log
    assert (tmp_path / "run/results.json").is_file()


def test_diverging_run_rolls_back_then_stops_with_one_line(data, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", optim={"lr": 1e6},
                       data={"path": str(data), "n_valid": 24, "normalize_input": False},
                       schedule={"max_nan_failures": 2, "nan_lr_factor": 0.9, "pretrain_stages": [[1, 1.0]],
                                 "finetune": False, "epochs": 3})
    r = run_bcrdist("train", "--config", str(cfg), check=False)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "training diverged" in err[0] and "max_nan_failures" in err[0]
    log = (tmp_path / "run/train.log").read_text()
    assert log.count("non-finite loss") == 2 and "rolled back to the best weights" in log


@pytest.mark.parametrize("sections, expected", [
    ({"schedule": {"patiense": 3}}, "unknown key 'schedule.patiense'"),
    ({"model": {"alpha": "forty"}}, "model.alpha: expected an integer"),
    ({"data": {"path": "/nonexistent/data"}}, "/nonexistent/data/manifest.json"),
    ({"model": {"alpha": 3, "levels": 5}}, "Ns=16 is not divisible by 2^levels = 32"),
])
def test_bad_configs_give_one_line_errors(data, tmp_path, sections, expected):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", **sections)
    r = run_bcrdist("train", "--config", str(cfg), check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr


def test_malformed_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule: {epochs: 3\n")
    r = run_bcrdist("train", "--config", str(bad), check=False)
    assert r.returncode == 2 and str(bad) in r.stderr and "malformed YAML" in r.stderr


def test_bf16_autocast_and_compile_match_fp32_eager(data, tmp_path):
    torch.manual_seed(0)
    model = bcrnet_model({"n_input": (16, 8), "n_output": (16, 6), "alpha": 3, "n_cnn": 1, "n_cnn3": 2})
    x = torch.randn(4, 16, 8)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).float()
    assert float((low - ref).abs().max()) <= 0.05 * float(ref.abs().max())
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("runtime", [{"compile": "true", "precision": "bf16-mixed", "threads": 1},
                                     {"compile": "false", "precision": "16-mixed", "threads": 1}])
def test_compile_and_mixed_precision_training_paths(data, tmp_path, runtime):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", runtime=runtime,
                       schedule={"max_steps": 6, "pretrain_stages": [[1, 1.0]], "finetune": False})
    run_bcrdist("train", "--config", str(cfg), timeout=400)
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert rows and np.isfinite(rows[-1]["train_loss"])
    ck = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ck["model"])
    if runtime["precision"] == "16-mixed":
        assert ck["scaler"] and "scale" in ck["scaler"]


def test_evaluation_under_torchrun_is_exact(data, tmp_path):
    """Two ranks evaluate disjoint parts (60 = 30 + 30) and all-reduce: the metrics equal one process's."""
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run",
                       schedule={"max_steps": 3, "pretrain_stages": [[1, 1.0]], "finetune": False})
    run_bcrdist("train", "--config", str(cfg))
    ckpt = str(tmp_path / "run/checkpoints/best.pt")
    run_bcrdist("evaluate", "--checkpoint", ckpt, "--data", str(data), "--out", str(tmp_path / "one"))
    torchrun(2, "evaluate", "--checkpoint", ckpt, "--data", str(data), "--out", str(tmp_path / "two"))
    one = json.loads((tmp_path / "one/metrics.json").read_text())["metrics"]
    two = json.loads((tmp_path / "two/metrics.json").read_text())["metrics"]
    assert one["weighted"]["count"] == two["weighted"]["count"] == 60
    for name in ("weighted", "rel_l2"):
        assert abs(one[name]["mean"] - two[name]["mean"]) < 1e-6
        assert abs(one[name]["max"] - two[name]["max"]) < 1e-6
    # every sample saved, in index order, whatever the number of ranks
    with h5py.File(tmp_path / "one/predictions.h5") as f1, h5py.File(tmp_path / "two/predictions.h5") as f2:
        assert f1["index"][()].tolist() == f2["index"][()].tolist() and len(f1["index"]) == 60
        np.testing.assert_allclose(f1["pred_eta"][()], f2["pred_eta"][()], rtol=1e-5, atol=1e-6)
    # every sample's errors in metrics.json: complete and in index order whatever the number of ranks
    s1, s2 = (json.loads((tmp_path / f"{n}/metrics.json").read_text())["samples"] for n in ("one", "two"))
    assert s1["index"] == s2["index"] == sorted(s1["index"]) and len(s1["index"]) == 60
    for name in ("weighted", "rel_l2", "rel_l1", "psnr"):
        np.testing.assert_allclose(s1[name], s2[name], rtol=1e-5, atol=1e-6)


def test_initial_weights_branch_and_keras_compat(data, tmp_path):
    """The original's --initialvalue branch: fine-tune only at lr/10 with reduce-LR, from a checkpoint."""
    first = write_config(tmp_path / "a.yaml", data, tmp_path / "a",
                         schedule={"max_steps": 4, "pretrain_stages": [[1, 1.0]], "finetune": False})
    run_bcrdist("train", "--config", str(first))
    second = write_config(tmp_path / "b.yaml", data, tmp_path / "b", optim={"lr": 1e-3},
                          schedule={"epochs": 2, "keras_compat": True, "initial_batch_size": 16})
    run_bcrdist("train", "--config", str(second), "--initialvalue", str(tmp_path / "a/checkpoints/best.pt"))
    rows = [json.loads(line) for line in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows} == {"finetune"} and len(rows) == 2
    assert all(abs(r["lr"] - 1e-4) < 1e-12 for r in rows)
    assert rows[0]["global_batch"] == 16


# ------------------------------------------------------------------ issue 12: one line instead of tracebacks


def one_line_error(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, (r.returncode, r.stderr)
    return lines[0]


def test_evaluate_without_plots_and_with_data_of_another_size(data, tmp_path):
    """`evaluate --plots 0` failed ("Number of rows must be a positive integer"); a checkpoint made for another
    input size was a shape error naming neither the checkpoint nor the data."""
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run",
                       schedule={"max_steps": 2, "pretrain_stages": [[1, 1.0]], "finetune": False})
    run_bcrdist("train", "--config", str(cfg))
    ckpt = tmp_path / "run/checkpoints/best.pt"
    run_bcrdist("evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp_path / "e"),
                "--plots", "0")
    assert (tmp_path / "e/metrics.json").is_file() and (tmp_path / "e/error_histogram.png").is_file()
    assert not (tmp_path / "e/samples.png").exists()
    wide = make_dataset(tmp_path / "wide", n=60, ns=32, nd=8, per_shard=30, val=6)
    r = run_bcrdist("evaluate", "--checkpoint", str(ckpt), "--data", str(wide), "--out", str(tmp_path / "w"),
                    check=False)
    assert r.returncode == 2
    line = one_line_error(r)
    assert f"{ckpt}: a model for input 16×8 → output 16×6, but the data set {wide} has input 32×8 → target 32×6" \
        in line, line
    assert not (tmp_path / "w").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only), unmounted after the test."""
    import os

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_files(data, small_disk, tmp_path):
    import hashlib
    import os

    cfg = write_config(tmp_path / "c.yaml", data, small_disk / "run", results_table=None,
                       schedule={"max_steps": 3, "pretrain_stages": [[1, 1.0]], "finetune": False})
    run_bcrdist("train", "--config", str(cfg))
    run = small_disk / "run"
    kept = ("results.json", "config.yaml", "checkpoints/best.pt", "checkpoints/last.pt")

    def hashes():
        return {name: hashlib.sha256((run / name).read_bytes()).hexdigest() for name in kept}

    before = hashes()
    # leave room for log lines, not for a checkpoint (last.pt is about 60 kB)
    st = os.statvfs(small_disk)
    room = (run / "checkpoints/last.pt").stat().st_size // 3
    (small_disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - room))
    r = run_bcrdist("train", "--config", str(cfg), "--resume", "auto", "--set", "schedule.max_steps=30",
                    check=False, timeout=240)
    assert r.returncode == 2
    line = one_line_error(r)
    assert re.fullmatch(rf"bcrdist train: error: {re.escape(str(run / 'checkpoints'))}/(last|best)\.pt: cannot "
                        rf"write: No space left on device", line), line
    assert hashes() == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]   # no temporaries
