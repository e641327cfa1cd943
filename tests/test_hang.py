"""Issue 23 (part 1): a rank that stops answering stops the run with one line naming it, within the process
group's timeout. Two timeouts (`distributed.init_timeout_s` through the first optimizer step,
`distributed.timeout_s` after it), each rank's heartbeat in the rendezvous store, the one-line HangError
(exit 1), and NCCL's error handling and flight recorder set only where the site has not set them."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bcrdist.cli.main import main
from bcrdist.config import load_config
from bcrdist.distributed.heartbeat import Silence, heartbeat_interval
from bcrdist.distributed.launch_env import LaunchEnv
from bcrdist.distributed.nccl_debug import nccl_debug_env, use_nccl_debug_env
from bcrdist.distributed.process_group import DistContext, init_distributed, shutdown_distributed
from bcrdist.errors import ConfigError
from bcrdist.train.config import TrainConfig
from bcrdist.train.hang import hang_message
from train_helpers import ROOT, clean_env, make_dataset, write_config

LONG = {"max_steps": 5000, "epochs": 500, "pretrain_stages": [[1, 1.0]], "finetune": False}
TIMEOUT_S = 5
# the stated bound: the surviving rank exits within the timeout plus this (start-up of the failure path, the
# heartbeat read, shutdown) on a loaded 2-core machine
MARGIN_S = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", n=120, per_shard=40, val=12)


# ------------------------------------------------------------------ a rank stopped mid-training


@pytest.mark.parametrize("stopped", [1, 0])
def test_a_stopped_rank_is_named_and_the_other_exits_within_the_timeout(data, tmp_path, stopped):
    """SIGSTOP one rank of a two-rank gloo run after its first checkpoint: the other exits 1 within
    distributed.timeout_s (the init timeout is the default 1800 s: the switch after the first step is what makes
    it exit this early) with one stderr line naming the stopped rank; rank 0 stopped is seen through the store
    its process hosts (the ranks are started directly, without torchrun's agent)."""
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", data, run_dir, schedule=LONG, data={"path": str(data), "n_valid": 12},
                       checkpoint={"every_steps": 1}, distributed={"timeout_s": TIMEOUT_S})
    port = free_port()
    procs = []
    try:
        for rank in range(2):
            env = {**clean_env(), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                   "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            with open(tmp_path / f"err{rank}", "w") as err:
                procs.append(subprocess.Popen([sys.executable, "-m", "bcrdist", "train", "--config", str(cfg)],
                                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err))
        last = run_dir / "checkpoints" / "last.pt"
        deadline = time.time() + 120
        while not last.is_file():
            assert all(p.poll() is None for p in procs) and time.time() < deadline, \
                f"training ended or did not start: {[(tmp_path / f'err{r}').read_text() for r in range(2)]}"
            time.sleep(0.05)
        procs[stopped].send_signal(signal.SIGSTOP)
        survivor = procs[1 - stopped]
        try:
            code = survivor.wait(timeout=TIMEOUT_S + MARGIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank {1 - stopped} still runs {TIMEOUT_S + MARGIN_S} s after rank {stopped} stopped")
    finally:
        for p in procs:
            p.kill()
            p.wait()
    err = (tmp_path / f"err{1 - stopped}").read_text()
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"bcrdist train: error: rank {stopped} did not answer after step "), line
    silent = "the rendezvous store on its node has not answered for" if stopped == 0 else "no heartbeat for"
    assert f" ({silent} " in line, line
    assert line.endswith(f" s; collectives wait {TIMEOUT_S} s, distributed.timeout_s): its process is stopped, hung "
                         f"or gone; the last saved state is {last}"), line


# ------------------------------------------------------------------ the process group and the heartbeats


def _gloo_worker(rank: int, port: int, outdir: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    for name in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE", "SLURM_PROCID", "BCRDIST_DIST_METHOD"):
        os.environ.pop(name, None)
    trace_dir = Path(outdir) / "nccl_trace"
    before = set(os.environ)
    ctx = init_distributed("cpu", timeout_s=1800, nccl_trace_dir=trace_dir)

    def pg_timeout() -> float:
        backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
        return backend.options._timeout.total_seconds()

    out = {"backend": ctx.backend, "init": pg_timeout(), "init_interval": ctx.heartbeat.interval,
           "env_added": sorted(set(os.environ) - before), "trace_dir": trace_dir.exists()}
    ctx.set_timeout(7)
    out.update(after=pg_timeout(), timeout_s=ctx.timeout_s, interval=ctx.heartbeat.interval,
               sum=float(ctx.all_reduce_sum(torch.tensor([rank + 1.0]))[0]))
    ctx.barrier()
    out["silence"] = ctx.silence()
    shutdown_distributed()
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)


def test_the_timeout_switch_reads_back_from_gloo_and_live_ranks_are_not_silent(tmp_path):
    # fork: the children inherit the imported modules (spawn would re-import torch)
    pc = mp.start_processes(_gloo_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=False,
                            start_method="fork")
    deadline = time.time() + 60
    while not pc.join(timeout=1):
        if time.time() > deadline:
            for p in pc.processes:
                p.kill()
            pytest.fail("gloo workers did not finish in 60 s")
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == {"backend": "gloo", "init": 1800.0, "init_interval": 30.0, "env_added": [], "trace_dir": False,
                       "after": 7.0, "timeout_s": 7.0, "interval": 1.0, "sum": 3.0, "silence": None}


def test_one_process_has_no_process_group_to_time_out():
    ctx = DistContext(LaunchEnv("single", 0, 1, 0), torch.device("cpu"))
    ctx.set_timeout(5)
    assert ctx.timeout_s == 0.0 and ctx.silence() is None


def test_heartbeat_interval_is_a_tenth_of_the_timeout_within_1_and_30_s():
    assert [heartbeat_interval(t) for t in (0.5, 5, 60, 600, 1800)] == [1.0, 1.0, 6.0, 30.0, 30.0]


def test_the_message_names_the_silent_ranks_the_timeout_keys_and_the_saved_state(tmp_path):
    cfg = load_config(None, TrainConfig, [f"run_dir={tmp_path / 'run'}", "distributed.timeout_s=30"])
    ctx = DistContext(LaunchEnv("torchrun", 0, 4, 0), torch.device("cpu"), "gloo", timeout_s=30.0)
    text = hang_message(cfg, ctx, Silence((1, 3), 41.2), 12)
    assert text == ("ranks 1, 3 did not answer after step 12 (no heartbeat for 41 s; collectives wait 30 s, "
                    "distributed.timeout_s): their processes are stopped, hung or gone; no state was saved yet")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    ctx.timeout_s = 1800.0
    text = hang_message(cfg, ctx, Silence((0,), 1803.4, store=True), 0)
    assert text == (f"rank 0 did not answer during start-up (the rendezvous store on its node has not answered for "
                    f"1803 s; collectives wait 1800 s, distributed.init_timeout_s): its process is stopped, hung or "
                    f"gone; the last saved state is {last}")
    cfg.distributed.timeout_s = 1800.0          # one value for both: both keys set it
    assert "collectives wait 1800 s, distributed.init_timeout_s and distributed.timeout_s)" in hang_message(
        cfg, ctx, Silence((2,), 1900.0), 3)


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize("key", ["init_timeout_s", "timeout_s"])
@pytest.mark.parametrize("value", ["0", "-1", ".nan", ".inf", "nan"])
def test_a_timeout_must_be_a_positive_finite_number(key, value):
    with pytest.raises(ConfigError) as err:
        load_config(None, TrainConfig, [f"distributed.{key}={value}"])
    text = str(err.value)
    assert text.startswith(f"--set distributed.{key}={value}: distributed.{key}: ") and "\n" not in text, text


def test_the_timeouts_default_to_30_and_10_minutes():
    cfg = load_config(None, TrainConfig, [])
    assert (cfg.distributed.init_timeout_s, cfg.distributed.timeout_s) == (1800.0, 600.0)
    assert math.isclose(load_config(None, TrainConfig, ["distributed.timeout_s=0.5"]).distributed.timeout_s, 0.5)


def test_the_cli_refuses_a_bad_timeout_with_one_line_and_status_2(capsys):
    assert main(["train", "--set", "distributed.timeout_s=0", "--print", "all"]) == 2
    err = capsys.readouterr().err
    assert err == ("bcrdist train: error: --set distributed.timeout_s=0: distributed.timeout_s: must be a finite "
                   "number > 0, got 0.0\n")


# ------------------------------------------------------------------ NCCL's environment


def test_nccl_debug_env_values(tmp_path):
    assert nccl_debug_env(tmp_path / "nccl_trace") == {
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "1", "TORCH_FR_DUMP_TEMP_FILE": f"{tmp_path}/nccl_trace/rank_",
        "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": f"{tmp_path}/nccl_trace/rank_"}


def test_the_sites_own_settings_win_under_any_of_their_names(tmp_path):
    environ = {"PATH": "/bin"}
    assert use_nccl_debug_env(tmp_path, environ) == nccl_debug_env(tmp_path)
    assert environ == {"PATH": "/bin", **nccl_debug_env(tmp_path)}
    site = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "TORCH_FR_BUFFER_SIZE": "500",
            "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/scratch/fr_"}
    environ = dict(site)
    assert use_nccl_debug_env(tmp_path, environ) == {"TORCH_NCCL_DUMP_ON_TIMEOUT": "1"}
    assert environ == {**site, "TORCH_NCCL_DUMP_ON_TIMEOUT": "1"}
    environ = {"NCCL_ASYNC_ERROR_HANDLING": "0", "TORCH_FR_DUMP_TEMP_FILE": "/scratch/fr_"}
    assert set(use_nccl_debug_env(tmp_path, environ)) == {"TORCH_NCCL_TRACE_BUFFER_SIZE", "TORCH_NCCL_DUMP_ON_TIMEOUT"}
