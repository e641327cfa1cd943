"""A run directory belongs to one run: who may write into it, and what a resumed run may change.

`claim_run_dir(cfg, restart)` (rank 0, before anything is read or written) decides what a `train` does with
RUN = `cfg.run_dir`:

- RUN holds no run (no `config.yaml`, `results.json`, `metrics.jsonl` or checkpoint; launcher files such as
  `slurm-JOB.out` or `submitit/` do not count): a new run.
- A new run (no `checkpoint.resume`) into a RUN that holds one is refused, saying how to continue it
  (`--resume auto`) or start over (`--restart`, which renames RUN to `RUN.old-YYYYmmdd-HHMMSS` and starts in an
  empty RUN; nothing is deleted).
- `--resume auto` of a finished run (`results.json` written) is `complete`: nothing is trained or written
  (a requeue after completion, or the documented command run again). A run that stopped at
  `schedule.max_steps` continues when the resuming config allows more steps.
- A resume (`auto`, or a checkpoint path) compares the config with the one the checkpoint was written with:
  a change of what the run is (model, data preprocessing and noise, seed, schedule stages and rules that
  shape them, optimizer, precision, …) is refused listing the keys (`old → new`); the keys of `MAY_CHANGE`
  (run length, checkpointing, logging, workers, threads, device, timeouts, the best-model tracker's rules) may
  change, and each change is a note for train.log. `data.path` may change (a data set copied to node-local disk):
  the data set's identity (its `dataset_id`) is checked against the checkpoint's when the state loads.

The claim also takes the run's lock: an exclusive POSIX record lock (`fcntl.lockf`) on `RUN/train.lock`,
held through an open descriptor for the run's lifetime, and refused to a second run (the message names the
holder: the pid, host and start time the holder wrote into the file, which is truncated only once it is
locked). A symbolic link (or anything but a regular file) at `train.lock`, `train.log`, `metrics.jsonl` or
`metrics.csv` is refused in one line before anything is written, its target untouched. The kernel (or the
file server) drops the lock when its process ends in any way, SIGKILL included, so no stale lock outlives a
run; the file itself stays. POSIX locks are the ones network file systems carry between nodes: NFSv3 through
the NLM protocol (lockd/statd; a `nolock` mount keeps locks local to one client), NFSv4 natively (lease-based:
the locks of a client that crashed are released when its lease expires, 90 s by default), Lustre when mounted
with `-o flock` (`localflock` makes them node-local, the default `noflock` refuses them), IBM Storage Scale
(GPFS) and CephFS cluster-wide, BeeGFS with `tuneUseGlobalFileLocks`. Where the file system refuses locks
altogether the run goes on without one and says so in train.log. Under DDP only rank 0 claims; the trainer
broadcasts the outcome so that every rank goes on or stops together.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bcrdist.config import to_dict, value_text
from bcrdist.errors import BcrdistError
from bcrdist.fileio import LockBusy, NotFollowedError, check_write_target, take_lock
from bcrdist.models.checkpoint import load_checkpoint
from bcrdist.train.run_log import LOG_NAMES

LOCK_NAME = "train.lock"
# a file or folder that only a training run writes
RUN_FILES = ("config.yaml", "results.json", "metrics.jsonl")
# config keys (a trailing '.' names a section) that a resumed run may change: how long it runs, where and how
# fast it runs, how long its ranks wait for each other, what it logs and checkpoints, and the tracker's rules
# (applied to the saved tracker state)
MAY_CHANGE = ("run_dir", "data.path", "data.num_workers", "data.preload", "schedule.max_steps",
              "schedule.patience", "schedule.patience_lr", "schedule.rel_threshold", "schedule.reduce_lr",
              "schedule.reduce_lr_factor", "schedule.max_nan_failures", "schedule.nan_lr_factor", "checkpoint.",
              "runtime.device", "runtime.compile", "runtime.threads", "runtime.host_memory", "runtime.log_every_steps",
              "runtime.requeue_signal", "distributed.init_timeout_s", "distributed.timeout_s", "results_table",
              "logging.")
MAX_STEPS_REASON = "reached schedule.max_steps"
# what a refusal of a link (or a FIFO, …) planted at one of the run's files says to do
NOT_OWN_FILE = "remove it, or train into another run_dir"


class RunDirError(BcrdistError):
    """The run directory holds another run, is in use, or the config changes what its run is."""


class RunLock:
    """The exclusive lock on RUN/train.lock (see the module docstring). `acquire()` raises RunDirError when
    another process holds it and returns False when the file system does not lock; `release()` drops it."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        try:
            fd = take_lock(self.path)
        except NotFollowedError as exc:
            raise RunDirError(f"{exc}; {NOT_OWN_FILE}") from None
        except LockBusy as busy:
            raise RunDirError(f"{self.path}: another training is using this run directory "
                              f"({busy.holder or 'holder unknown: it has not written its pid yet'}); wait for it "
                              f"to end, or train into another run_dir") from None
        self._fd = fd
        return fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def run_files(run_dir: Path) -> list[str]:
    """The names (relative to `run_dir`) of the files that make it hold a run."""
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    ckpt = run_dir / "checkpoints"
    if ckpt.is_dir():
        found += [f"checkpoints/{p.name}" for p in sorted(ckpt.glob("*.pt"))]
    return found


def move_aside(run_dir: Path) -> Path:
    """Rename `run_dir` to `run_dir.old-YYYYmmdd-HHMMSS` (a counter appended if that exists); the new name."""
    base = f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    target = run_dir.with_name(base)
    n = 1
    while target.exists():
        target, n = run_dir.with_name(f"{base}-{n}"), n + 1
    try:
        os.rename(run_dir, target)
    except OSError as exc:
        raise RunDirError(f"{run_dir}: cannot move the old run aside to {target}: {exc.strerror}") from None
    return target


def flat(config: dict, prefix: str = "") -> dict:
    """{'model': {'alpha': 3}} → {'model.alpha': 3}; lists stay values."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def may_change(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in MAY_CHANGE)


def config_changes(saved: dict, now: dict) -> tuple[list[str], list[str]]:
    """(refused, allowed): 'key: old → new' for every key whose value differs between the config a checkpoint
    was written with (`saved`) and the resuming one (`now`), split by `may_change`. Keys one of them lacks (a
    config written by another bcrdist version) are not compared, nor `checkpoint.resume` (how this run
    started)."""
    old, new = flat(saved), flat(now)
    refused, allowed = [], []
    for key in new:
        if key != "checkpoint.resume" and key in old and old[key] != new[key]:
            change = f"{key}: {value_text(old[key])} → {value_text(new[key])}"
            (allowed if may_change(key) else refused).append(change)
    return refused, allowed


@dataclass
class Claim:
    """What `claim_run_dir` decided: `complete` (the run is finished: a message saying so, and its
    `stop_reason`), `resume` (the checkpoint to resume from, if `--restart` moved it), `notes` for train.log,
    and the `lock` to release when the run ends."""

    lock: RunLock | None = None
    complete: str = ""
    stop_reason: str = ""
    resume: str | None = None
    notes: list[str] = field(default_factory=list)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def _saved_config(path: Path) -> dict | None:
    """The config a training checkpoint or a run's config.yaml holds (None when there is none)."""
    if path.suffix == ".yaml":
        with open(path) as f:
            return yaml.safe_load(f) or {}
    return load_checkpoint(path).get("config")


def _check_same_run(cfg, source: Path) -> list[str]:
    """Refuse a config that changes what the run saved in `source` is; the allowed changes as notes."""
    saved = _saved_config(source)
    if not saved:
        return []
    refused, allowed = config_changes(saved, to_dict(cfg))
    if refused:
        raise RunDirError(f"{source}: the config changes what this run is: {'; '.join(refused)}; resume with the "
                          f"run's values, or train the new config into another run_dir (or --restart to move "
                          f"this run aside)")
    return [f"resuming with changed settings: {', '.join(allowed)}"] if allowed else []


def _finished(run_dir: Path, cfg) -> tuple[bool, str]:
    """(finished, stop_reason) from results.json; a run stopped at schedule.max_steps is not finished when
    the config now allows more steps (and last.pt is there to continue from)."""
    path = run_dir / "results.json"
    if not path.is_file():
        return False, ""
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path}: unreadable ({exc}); move the run aside with --restart") from None
    reason, steps = str(results.get("stop_reason", "")), results.get("steps")
    max_steps = cfg.schedule.max_steps
    more = (reason.startswith(MAX_STEPS_REASON) and isinstance(steps, int)
            and (max_steps is None or max_steps > steps) and (run_dir / "checkpoints" / "last.pt").is_file())
    return not more, reason


def claim_run_dir(cfg, restart: bool = False) -> Claim:
    """Take RUN's lock and decide what this `train` may do with it (module docstring); rank 0 only.
    Raises RunDirError (after releasing the lock) when the run must not go on."""
    run_dir = Path(cfg.run_dir)
    resume = cfg.checkpoint.resume
    if restart and resume == "auto":
        raise RunDirError("--restart starts the run over; it cannot be combined with --resume auto")
    run_dir.mkdir(parents=True, exist_ok=True)
    claim = Claim(lock=RunLock(run_dir))
    try:
        if not claim.lock.acquire():
            claim.lock = None
            claim.notes.append(f"warning: the file system of {run_dir} does not lock files: a second training "
                               f"into this run directory would not be refused")
        held = run_files(run_dir)
        if restart and held:
            claim = _restart(run_dir, claim, resume)
            resume = claim.resume or resume
            held = []
        # the logs are appended to in place: a planted link is refused now, before anything is trained
        for name in LOG_NAMES:
            try:
                check_write_target(run_dir / name)
            except NotFollowedError as exc:
                raise RunDirError(f"{exc}; {NOT_OWN_FILE}") from None
        last = run_dir / "checkpoints" / "last.pt"
        if resume is None:
            if held:
                raise RunDirError(f"{run_dir}: holds a run ({', '.join(held)}); continue it with --resume auto, "
                                  f"or start over with --restart (renames it to {run_dir.name}.old-<time>)")
            return claim
        if resume == "auto":
            source = last if last.is_file() else run_dir / "config.yaml"
            if source.is_file():
                claim.notes += _check_same_run(cfg, source)
            finished, claim.stop_reason = _finished(run_dir, cfg)
            if finished:
                claim.complete = (f"{run_dir}: the run is complete ({claim.stop_reason or 'results written'}); "
                                  f"results in {run_dir / 'results.json'}; nothing to do")
            elif claim.stop_reason:
                claim.notes.append(f"continuing a run that {claim.stop_reason}: schedule.max_steps is now "
                                   f"{cfg.schedule.max_steps}")
            return claim
        path = Path(resume)
        if (run_dir / "results.json").is_file():
            raise RunDirError(f"{run_dir}: holds a finished run (results.json); resuming {path} into it would "
                              f"replace its results: use another run_dir, or --restart to move it aside")
        if (run_dir / "config.yaml").is_file():
            claim.notes += _check_same_run(cfg, run_dir / "config.yaml")
        claim.notes += _check_same_run(cfg, path)
        return claim
    except BaseException:
        claim.release()
        raise


def _restart(run_dir: Path, claim: Claim, resume: str | None) -> Claim:
    """Move the old run aside and lock the new, empty run directory; a resume path inside the old run
    follows it."""
    inside = None
    if resume is not None:
        try:
            inside = Path(resume).resolve().relative_to(run_dir.resolve())
        except ValueError:
            inside = None
    old = move_aside(run_dir)
    run_dir.mkdir()
    fresh = Claim(lock=RunLock(run_dir), notes=list(claim.notes))
    try:
        if not fresh.lock.acquire():
            fresh.lock = None
    finally:
        claim.release()
    fresh.notes.append(f"--restart: the previous run is now {old}")
    if inside is not None:
        fresh.resume = str(old / inside)
    return fresh
