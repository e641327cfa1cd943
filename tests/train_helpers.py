"""Small real data sets and configs for the training tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from bcrdist.data.format import read_manifest, write_manifest, write_shard
from bcrdist.distributed.launch_env import LaunchEnv
from bcrdist.distributed.process_group import DistContext
from bcrdist.data.splits import write_splits
from bcrdist.data.stats import store_statistics
from bcrdist.models.bcrnet import BCRNet
from bcrdist.models.checkpoint import load_checkpoint
from bcrdist.models.scattering import ScatteringModel

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def signal_after_first_checkpoint(argv: list[str], last: Path, sig: int, timeout: float = 120
                                  ) -> tuple[int, str, str]:
    """Run `python -m bcrdist ARGV`, send it `sig` once `last` (its last.pt) exists; (exit status, stdout,
    stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "bcrdist", *argv], cwd=ROOT, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    try:
        while not last.is_file():
            assert proc.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, out, err


def make_dataset(out: Path, n: int = 240, ns: int = 16, nd: int = 8, nr: int = 6, per_shard: int = 50,
                 seed: int = 0, val: int = 24) -> Path:
    """A learnable data set: `measure` is a fixed linear, rotation-equivariant image of the target `coe`."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((nr, nd)) / np.sqrt(nr)
    infos = []
    for shard, first in enumerate(range(0, n, per_shard)):
        k = min(per_shard, n - first)
        coe = np.abs(rng.standard_normal((k, ns, nr))).astype(np.float32)
        coe = 0.5 * (coe + np.roll(coe, 1, axis=1))
        measure = np.einsum("bsr,rd->bsd", coe, mix).astype(np.float32)
        infos.append(write_shard(out, shard, first, {"measure": measure, "measure_imag": 0.5 * measure,
                                                    "coe": coe}))
    write_manifest(out, infos, provenance={"tool": "tests/train_helpers.py", "seed": seed})
    store_statistics(out)
    write_splits(out, 0.75, val=val)
    return out


def write_config(path: Path, data_dir: Path, run_dir: Path, **sections) -> Path:
    """A tiny BCR-Net training config; `sections` override whole keys, e.g. schedule={...}."""
    cfg = {
        "run_dir": str(run_dir),
        "seed": 0,
        "data": {"path": str(data_dir), "n_valid": 24},
        "model": {"alpha": 3, "n_cnn": 1, "n_cnn3": 2},
        "schedule": {"batch_size": 8, "epochs": 1, "pretrain_stages": [[1, 1.0], [2, 0.5]],
                     "finetune_stages": [[2, 1.0]]},
        "runtime": {"compile": "false", "threads": 1},
        "checkpoint": {"every_steps": 5},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def final_weights(run_dir: Path) -> dict:
    """The model weights of a run's last.pt."""
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].to(torch.complex128) - b[k].to(torch.complex128)).abs().max()) for k in a)
    assert worst <= atol, f"weights differ by {worst}"


def clean_env() -> dict:
    """The environment without launcher variables, so a test's child processes detect their own launcher."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "PMI_", "PMIX_", "OMPI_", "TORCHELASTIC_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(args: list[str], timeout: float = 240, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=timeout,
                            **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def bcrdist(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "bcrdist", *args], **kwargs)


def start_bcrdist(*args: str) -> subprocess.Popen:
    """`bcrdist ARGS` started in the background, as `bcrdist()` runs it; `finish()` waits for it. A test starts
    its independent commands together, so that their start-ups (torch's import) overlap."""
    return subprocess.Popen([sys.executable, "-m", "bcrdist", *map(str, args)], cwd=ROOT, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_torchrun(nproc: int, *args: str) -> subprocess.Popen:
    """`torchrun` as `torchrun()` runs it, started in the background; `finish()` waits for it."""
    return subprocess.Popen([str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", "-m", "bcrdist",
                             *map(str, args)], cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    """Wait for a command of `start_bcrdist` or `start_torchrun`; AssertionError (with its output) when it
    failed, as `run`."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, proc.args))} failed ({result.returncode}):\n{out[-3000:]}\n"
                             f"{err[-3000:]}")
    return result


def torchrun(nproc: int, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return run([str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", "-m", "bcrdist", *args],
               **kwargs)


def one_process() -> DistContext:
    """The context of a single CPU process (what `init_distributed` returns without a launcher)."""
    return DistContext(LaunchEnv("single", 0, 1, 0), torch.device("cpu"))


def bcrnet_model(net: dict, **kwargs) -> ScatteringModel:
    """A ScatteringModel over BCR-Net of constructor arguments `net` (`kwargs`: the model's data fields)."""
    return ScatteringModel(BCRNet(**net), **kwargs)


def planned_model(cfg, data_dir, world_size: int = 1) -> ScatteringModel:
    """The model the run plan of training config `cfg` on the data set `data_dir` builds, before any fit to the
    data or normalisation."""
    from bcrdist.train.model_setup import model_from_plan
    from bcrdist.train.plan import make_plan

    return model_from_plan(make_plan(cfg, read_manifest(data_dir), world_size).model)


def kill_training_at_step(config: Path, run_dir: Path, step: int, timeout: float = 120) -> dict:
    """Start `bcrdist train --config CONFIG`, SIGKILL it once its last.pt holds at least `step` steps, and return
    that checkpoint's progress (what a resume starts from); AssertionError if the run ends first."""
    proc = subprocess.Popen([sys.executable, "-m", "bcrdist", "train", "--config", str(config)], cwd=ROOT,
                            env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if last.is_file() and load_checkpoint(last)["progress"]["step"] >= step:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "results.json").exists(), "the run finished before it was killed"
    return load_checkpoint(last)["progress"]


def planned_trainer(cfg, ctx: DistContext | None = None):
    """The Trainer of `cfg` in this process, built from its run plan as `bcrdist.train.trainer.train` builds it
    (without claiming the run directory)."""
    from bcrdist.train.plan import make_plan
    from bcrdist.train.trainer import Trainer

    ctx = ctx or one_process()
    return Trainer(cfg, ctx, make_plan(cfg, read_manifest(cfg.data.path), ctx.world_size))
