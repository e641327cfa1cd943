"""Issue 12 case 8: a run stopped by a signal saves last.pt and says so in its exit status. SIGTERM or SIGUSR2
outside Slurm's requeue exited 0 without results, so `timeout … bcrdist train … && bcrdist evaluate …` went
on with a half-trained model; now 128 + the signal's number. Ctrl-C: 130 with one line; a second one ends the
process at once. (The requeue path, exit 0, runs on the real Slurm cluster in tests/test_slurm.py.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bcrdist.models.checkpoint import load_checkpoint
from bcrdist.train.preemption import PreemptionFlag, exit_code, requeue_slurm_job
from train_helpers import ROOT, bcrdist, clean_env, make_dataset, signal_after_first_checkpoint, write_config

LONG = {"max_steps": 5000, "epochs": 500, "pretrain_stages": [[1, 1.0]], "finetune": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", n=120, per_shard=40, val=12)


def test_exit_codes_are_128_plus_the_signal_number():
    assert (exit_code("TERM"), exit_code("USR2"), exit_code("INT")) == (143, 140, 130)


def test_no_requeue_outside_slurm(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert requeue_slurm_job(log=lambda line: pytest.fail(line)) is False


def test_the_first_ctrl_c_is_a_request_and_restores_the_default_action():
    before = signal.getsignal(signal.SIGINT)
    flag = PreemptionFlag(("USR2", "TERM"), interrupt=True)
    try:
        signal.raise_signal(signal.SIGINT)
        assert flag.requested and flag.signal_name == "INT" and flag.signal_number == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL       # the next Ctrl-C ends the process
        assert not flag.forward_to_previous()                           # Ctrl-C is never handed to a requeue
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGINT) == before


def test_a_second_ctrl_c_ends_the_process_at_once():
    code = ("import os, signal, time; from bcrdist.train.preemption import PreemptionFlag; "
            "f = PreemptionFlag(interrupt=True); os.kill(os.getpid(), signal.SIGINT); time.sleep(0.1); "
            "assert f.requested; print('first', flush=True); os.kill(os.getpid(), signal.SIGINT); "
            "time.sleep(30); print('survived', flush=True)")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGINT and r.stdout.split() == ["first"] and time.time() - t0 < 25


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGUSR2, 140), (signal.SIGINT, 130)])
def test_a_signal_outside_slurm_saves_last_pt_and_exits_non_zero(data, tmp_path, sig, code):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", schedule=LONG,
                       data={"path": str(data), "n_valid": 12})
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    status, out, err = signal_after_first_checkpoint(["train", "--config", str(cfg)], last, sig)
    assert status == code, err
    step = load_checkpoint(last)["progress"]["step"]
    assert 5 <= step < 5000
    name = signal.Signals(sig).name
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"bcrdist train: stopped by {name} at step {step}: ")
    assert f"{last}: continue with --resume auto (exit status {code})" in lines[0]
    assert f"received {name}: saving last.pt at step {step}" in (tmp_path / "run" / "train.log").read_text()
    assert not (tmp_path / "run" / "results.json").exists()
    if sig == signal.SIGINT:
        assert "Ctrl-C: stopping at the next step" in out
    else:
        # the saved state continues: the stopped run resumes to its end
        bcrdist("train", "--config", str(cfg), "--resume", "auto", "--set", f"schedule.max_steps={step + 2}")
        assert (tmp_path / "run" / "results.json").is_file()
