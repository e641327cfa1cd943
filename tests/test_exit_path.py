"""Issue 21 items 8 and 5: how a distributed run ends.

Item 8: a two-rank job ended with exit 134 after training had finished (`terminate called without an active
exception`: std::terminate from a torch C++ thread at the interpreter's exit). `shutdown_distributed` did not
end the gloo process group's threads: the group was still held by the DDP wrapper and by
`torch.distributed.nn`'s default arguments (`group=group.WORLD`, evaluated when DDP's constructor imports it
through torch._dynamo), so its threads and work lived into the interpreter's teardown. Here two-rank runs,
each a process group, DDP, a few collectives and the real shutdown path, end with status 0 and no gloo or
TCPStore thread left once `shutdown_distributed` returns, 20 times over.

Item 5: `bcrdist train --nproc N` runs torchrun's agent itself: SIGTERM and SIGINT end it with 143 and 130,
rank 0's one line on stderr (no agent traceback) and last.pt saved.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bcrdist.models.checkpoint import load_checkpoint
from train_helpers import ROOT, clean_env, make_dataset, signal_after_first_checkpoint, write_config

RUNS = 20
# the torch threads of a process group: gloo's work and transport threads, the TCPStore server's loop
GROUP_THREADS = ("gloo", "tcpstore")

# One process forks both ranks of every run, so each run pays for its process group, not for importing
# torch; each rank leaves through the interpreter's normal exit (SystemExit at the top level), where the
# crash happened.
RUNS_SCRIPT = textwrap.dedent("""
    import os
    import socket
    import sys

    import torch

    from bcrdist.distributed import init_distributed, shutdown_distributed


    def rank_body():
        ctx = init_distributed("cpu", 60.0)
        # DDP, as the trainer wraps its model: its constructor imports torch._dynamo after the group exists
        ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 8))
        for step in range(3):
            ddp(torch.ones(4, 8)).sum().backward()
            ctx.all_reduce_sum(torch.ones(16))
            ctx.broadcast_object({"step": step})
        del ddp             # as Trainer.close: the wrapper goes before the group
        shutdown_distributed()
        threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
        # one write: both ranks share the pipe
        os.write(1, f"rank {ctx.rank} threads after shutdown: {' '.join(sorted(threads))}\\n".encode())


    for run in range(int(sys.argv[1])):
        if run == 1:
            # the first run's ranks imported it after their group existed, as in training; the later ones
            # inherit it, which keeps each run to its process group
            import torch._dynamo  # noqa: F401
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        children = []
        for rank in (0, 1):
            pid = os.fork()
            if pid == 0:
                os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                  MASTER_PORT=str(port), BCRDIST_DIST_METHOD="torchrun")
                rank_body()
                sys.exit(0)
            children.append(pid)
        statuses = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
        os.write(1, f"run {run}: exit statuses {statuses[0]} {statuses[1]}\\n".encode())
""")


def test_two_rank_runs_exit_0_and_leave_no_process_group_thread(tmp_path):
    script = tmp_path / "runs.py"
    script.write_text(RUNS_SCRIPT)
    t0 = time.time()
    r = subprocess.run([sys.executable, str(script), str(RUNS)], cwd=tmp_path, env=clean_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    runs = [line for line in r.stdout.splitlines() if line.startswith("run ")]
    assert runs == [f"run {i}: exit statuses 0 0" for i in range(RUNS)], r.stdout + r.stderr
    assert "terminate called" not in r.stderr, r.stderr
    after = [line for line in r.stdout.splitlines() if "threads after shutdown" in line]
    assert len(after) == 2 * RUNS
    left = [line for line in after if any(name in line for name in GROUP_THREADS)]
    assert not left, left
    print(f"{RUNS} two-rank runs in {time.time() - t0:.0f} s")


# ------------------------------------------------------------------------------------- bcrdist train --nproc
LONG = {"max_steps": 5000, "epochs": 500, "pretrain_stages": [[1, 1.0]], "finetune": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", n=120, per_shard=40, val=12)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_nproc_forwards_a_signal_and_exits_with_its_status(data, tmp_path, sig, code):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", schedule=LONG,
                       data={"path": str(data), "n_valid": 12})
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    status, out, err = signal_after_first_checkpoint(["train", "--nproc", "2", "--config", str(cfg)], last, sig)
    assert status == code, err
    name = signal.Signals(sig).name
    step = load_checkpoint(last)["progress"]["step"]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err              # rank 0's line, no agent traceback
    assert lines[0].startswith(f"bcrdist train: stopped by {name} at step {step}: ")
    assert lines[0].endswith(f"(exit status {code})")
    assert "2 rank(s) via torchrun" in (tmp_path / "run" / "train.log").read_text()


def test_nproc_exits_with_the_workers_status_and_refuses_inside_a_launcher(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "missing", tmp_path / "run")
    r = subprocess.run([sys.executable, "-m", "bcrdist", "train", "--nproc", "2", "--config", str(cfg)], cwd=ROOT,
                       env=clean_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 2, r.stderr                                   # the workers' user-error status
    assert "Traceback" not in r.stderr and "ChildFailedError" not in r.stderr, r.stderr
    assert all(line.startswith("bcrdist train: error: ") for line in r.stderr.strip().splitlines()), r.stderr
    env = {**clean_env(), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    r = subprocess.run([sys.executable, "-m", "bcrdist", "train", "--nproc", "2", "--config", str(cfg)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "already a rank (torchrun)" in r.stderr, r.stderr
