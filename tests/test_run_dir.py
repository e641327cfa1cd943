"""Issue 12, run side: a run directory belongs to one run. A finished run is never retrained or overwritten by
running its command again, a second concurrent training is refused by the lock (which a SIGKILL does not leave
behind), and a resume may not change what the run is. Real `bcrdist train` processes on a small real data
set; files are compared by their SHA-256 before and after."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bcrdist.models.checkpoint import load_checkpoint
from bcrdist.train.run_dir import (LOCK_NAME, RunDirError, RunLock, config_changes, flat, may_change, move_aside,
                                   run_files)
from train_helpers import ROOT, bcrdist, clean_env, make_dataset, torchrun, write_config

SHORT = {"max_steps": 6, "pretrain_stages": [[1, 1.0]], "finetune": False}
LONG = {"max_steps": 5000, "epochs": 500, "pretrain_stages": [[1, 1.0]], "finetune": False}
KEPT = ("config.yaml", "results.json", "metrics.jsonl", "train.log", "checkpoints/best.pt", "checkpoints/last.pt")


def hashes(run_dir: Path) -> dict[str, str]:
    return {name: hashlib.sha256((run_dir / name).read_bytes()).hexdigest() for name in KEPT}


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", n=120, per_shard=40, val=12)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A config whose run (stopped at schedule.max_steps) is complete: results.json and both checkpoints."""
    tmp = tmp_path_factory.mktemp("finished")
    cfg = write_config(tmp / "c.yaml", data, tmp / "run", schedule=SHORT, data={"path": str(data), "n_valid": 12})
    bcrdist("train", "--config", str(cfg))
    return cfg


def copy_of(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished run and a config that points at it (run_dir may differ on resume)."""
    run = tmp_path / "run"
    shutil.copytree(finished.parent / "run", run)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(finished.read_text().replace(str(finished.parent / "run"), str(run)))
    return cfg, run


def start_training(cfg: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bcrdist", "train", "--config", str(cfg), *args], cwd=ROOT,
                            env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"training ended ({proc.returncode}) before {what}: {proc.stderr.read()}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


# ------------------------------------------------------------------ the pieces


def test_config_changes_split_what_the_run_is_from_how_it_runs():
    saved = {"run_dir": "a", "seed": 0, "model": {"alpha": 3, "n_cnn": 1}, "data": {"noise": 0.0, "num_workers": 0},
             "schedule": {"max_steps": 7, "pretrain_stages": [[1, 1.0]]}, "checkpoint": {"resume": None},
             "runtime": {"threads": 1}, "old_key": 1}
    now = {"run_dir": "b", "seed": 0, "model": {"alpha": 4, "n_cnn": 1}, "data": {"noise": 5.0, "num_workers": 2},
           "schedule": {"max_steps": 20, "pretrain_stages": [[1, 0.5]]}, "checkpoint": {"resume": "auto"},
           "runtime": {"threads": 2}, "new_key": 2}
    refused, allowed = config_changes(saved, now)
    assert refused == ["model.alpha: 3 → 4", "data.noise: 0.0 → 5.0", "schedule.pretrain_stages: [[1, 1.0]] → [[1, 0.5]]"]
    assert allowed == ["run_dir: a → b", "data.num_workers: 0 → 2", "schedule.max_steps: 7 → 20",
                       "runtime.threads: 1 → 2"]
    assert flat({"a": {"b": {"c": 1}}, "d": [1]}) == {"a.b.c": 1, "d": [1]}
    assert may_change("logging.tensorboard") and may_change("checkpoint.every_steps")
    assert not may_change("runtime.precision") and not may_change("optim.lr") and not may_change("seed")


def test_launcher_files_and_the_lock_do_not_make_a_run(tmp_path):
    (tmp_path / "slurm-12.out").write_text("job 12")
    (tmp_path / "submitit").mkdir()
    (tmp_path / LOCK_NAME).write_text("pid 1 on x")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".last.pt.1.tmp").write_bytes(b"")
    assert run_files(tmp_path) == []
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    assert run_files(tmp_path) == ["metrics.jsonl", "checkpoints/last.pt"]


def test_move_aside_never_replaces_an_earlier_copy(tmp_path):
    run = tmp_path / "run"
    first_names = []
    for i in range(2):
        run.mkdir()
        (run / "config.yaml").write_text(str(i))
        first_names.append(move_aside(run))
    assert not run.exists() and first_names[0] != first_names[1]
    assert [p.read_text() for p in (n / "config.yaml" for n in first_names)] == ["0", "1"]
    assert all(n.name.startswith("run.old-") for n in first_names)


def test_the_lock_refuses_another_process_and_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from bcrdist.train.run_dir import RunLock; "
                               "assert RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)",
                               str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=rf"{LOCK_NAME}: another training is using this run directory "
                                              rf"\(pid {holder.pid} on .*, since "):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(tmp_path)
    assert lock.acquire()                   # the kernel dropped the killed holder's lock
    assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} on ")
    lock.release()


# ------------------------------------------------------------------ issue 12 cases 1, 2, 6 and 9 (resume)


def test_rerunning_a_finished_run_is_refused_and_changes_nothing(finished, tmp_path):
    """Case 1: `train` again without --resume overwrote best.pt, last.pt and results.json (exit 0)."""
    cfg, run = copy_of(finished, tmp_path)
    before = hashes(run)
    r = bcrdist("train", "--config", str(cfg), check=False, timeout=120)
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert f"{run}: holds a run (config.yaml, results.json" in line and "--resume auto" in line and "--restart" in line
    assert hashes(run) == before
    assert not (tmp_path / "results.tsv").exists()


def test_resume_auto_of_a_finished_run_is_complete_and_exits_0(finished, tmp_path):
    """Case 6: `--resume auto` on a finished run (a requeue after completion) was an IndexError traceback."""
    cfg, run = copy_of(finished, tmp_path)
    before = hashes(run)
    r = bcrdist("train", "--config", str(cfg), "--resume", "auto", timeout=120)
    assert r.stderr.strip() == ""
    assert f"{run}: the run is complete (reached schedule.max_steps = 6); results in {run / 'results.json'}" in r.stdout
    assert hashes(run) == before


def test_resume_that_changes_the_run_is_one_line_listing_the_keys(finished, tmp_path):
    """Case 9: a resume after changing model.alpha was a 55-line traceback; a changed data.noise was accepted."""
    cfg, run = copy_of(finished, tmp_path)
    before = hashes(run)
    r = bcrdist("train", "--config", str(cfg), "--resume", "auto", "--set", "model.alpha=4", "--set", "data.noise=5",
                "--set", "schedule.max_steps=9", check=False, timeout=120)
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert f"{run / 'checkpoints' / 'last.pt'}: the config changes what this run is" in line
    assert "model.alpha: 3 → 4" in line and "data.noise: 0.0 → 5.0" in line and "max_steps" not in line
    assert hashes(run) == before


def test_more_steps_continue_a_run_stopped_at_max_steps_and_record_the_change(finished, tmp_path):
    cfg, run = copy_of(finished, tmp_path)
    assert "freed host memory: kept for reuse" in (run / "train.log").read_text()    # auto, on the CPU
    bcrdist("train", "--config", str(cfg), "--resume", "auto", "--set", "schedule.max_steps=9",
            "--set", "runtime.host_memory=release", timeout=120)
    log = (run / "train.log").read_text()
    assert "resuming with changed settings: run_dir: " in log and "schedule.max_steps: 6 → 9" in log
    assert "runtime.host_memory: auto → release" in log              # where the bytes live is not what the run is
    assert log.rstrip().count("freed host memory: the C library's defaults") == 1
    assert "continuing a run that reached schedule.max_steps = 6" in log
    assert json.loads((run / "results.json").read_text())["steps"] == 9


def test_restart_moves_the_old_run_aside_and_starts_over(finished, tmp_path):
    cfg, run = copy_of(finished, tmp_path)
    before = hashes(run)
    bcrdist("train", "--config", str(cfg), "--restart", timeout=120)
    (old,) = tmp_path.glob("run.old-*")
    assert hashes(old) == before                    # nothing deleted, nothing changed
    assert json.loads((run / "results.json").read_text())["steps"] == 6
    assert f"--restart: the previous run is now {old}" in (run / "train.log").read_text()
    r = bcrdist("train", "--config", str(cfg), "--restart", "--resume", "auto", check=False, timeout=120)
    assert r.returncode == 2 and "cannot be combined with --resume auto" in one_line(r.stderr)


def test_a_second_training_is_refused_by_the_lock_and_a_sigkill_leaves_no_stale_lock(data, tmp_path):
    """Case 2: two trainings into one run directory both exited 0, their checkpoints replacing each other's."""
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", schedule=LONG,
                       data={"path": str(data), "n_valid": 12})
    first = start_training(cfg)
    lock, last = tmp_path / "run" / LOCK_NAME, tmp_path / "run" / "checkpoints" / "last.pt"
    try:
        wait_for(lambda: lock.is_file() and lock.read_text().startswith(f"pid {first.pid} "), first, "lock")
        for args in ((), ("--resume", "auto")):
            r = bcrdist("train", "--config", str(cfg), *args, check=False, timeout=120)
            assert r.returncode == 2
            line = one_line(r.stderr)
            assert f"{lock}: another training is using this run directory (pid {first.pid} on " in line, line
        wait_for(last.is_file, first, "last.pt")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    step = load_checkpoint(last)["progress"]["step"]
    bcrdist("train", "--config", str(cfg), "--resume", "auto", "--set", f"schedule.max_steps={step + 3}", timeout=120)
    log = (tmp_path / "run" / "train.log").read_text()
    assert re.search(rf"resumed from {re.escape(str(last))} at stage pretrain-0, .*step {step}$", log, flags=re.M)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == step + 3


def test_under_torchrun_every_rank_follows_rank_0s_claim(finished, tmp_path):
    """Only rank 0 locks and looks; a refusal or a complete run reaches both ranks (neither waits alone)."""
    cfg, run = copy_of(finished, tmp_path)
    before = hashes(run)
    r = torchrun(2, "train", "--config", str(cfg), check=False, timeout=180)
    assert r.returncode != 0
    assert [line for line in r.stderr.splitlines() if line.startswith("bcrdist train: error:")] == \
        [f"bcrdist train: error: {run}: holds a run (config.yaml, results.json, metrics.jsonl, checkpoints/best.pt, "
         f"checkpoints/last.pt); continue it with --resume auto, or start over with --restart (renames it to "
         f"run.old-<time>)"] * 2
    r = torchrun(2, "train", "--config", str(cfg), "--resume", "auto", timeout=180)
    assert r.stdout.count("the run is complete") == 1
    assert hashes(run) == before
