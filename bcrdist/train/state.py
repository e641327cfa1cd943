"""A training run's state as registered parts, saved and loaded by one `Checkpointer` (`last.pt`).

Every part has `state_dict()` (plain values and tensors, so `torch.load(weights_only=True)` reads it back) and
`load_state_dict(state)`. The trainer registers its parts once:

    Checkpointer({"model": ModelWeights(model), "best_model": BestWeights(model), "optimizer": OptimizerHolder(…),
                  "scaler": GradScaler, "progress": ProgressCounters(…), "tracker": BestModelTracker(…),
                  "data": TrainingData(…), "reader": ReaderPosition(…), "rng": RandomState()}, ctx)

so adding a stateful part is one more entry. `last.pt` is {"format": TRAINING_FORMAT, "version", <metadata
the trainer adds: world_size, config, model_config>, <one entry per part>}. Files of older formats are
converted to this layout in one place, `upgrade_training_state`.

The parts defined here are the ones that are neither torch objects nor rules of their own (the tracker lives
in `best_model`, the data identity and the reader's position in `training_data`).
"""

from __future__ import annotations

import errno
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from bcrdist import __version__
from bcrdist.distributed.collective import on_main
from bcrdist.errors import BcrdistError, DataError
from bcrdist.models.checkpoint import (MODEL_FORMAT, RUN_MODEL, WeightsMismatch, atomic_save, load_checkpoint,
                                      load_model_state, model_state)
from bcrdist.train.best_model import STATE_FIELDS as TRACKER_STATE_FIELDS
from bcrdist.train.optim import make_optimizer, set_lr

TRAINING_FORMAT = "bcrdist-training-3"
V2_FORMAT = "bcrdist-training-2"            # the reader's position was the progress counters' `batch`
V1_FORMAT = "bcrdist-checkpoint-1"          # 0.1: one hand-assembled dict per file


class CheckpointWriteError(BcrdistError):
    """A checkpoint could not be written; the previous one is intact."""


def write_failure(path: str | Path, exc: OSError) -> str:
    """One line saying that writing `path` failed and why (`exc` may already name the file)."""
    reason = " ".join(str(exc.strerror or exc).split()) or errno.errorcode.get(exc.errno or 0, "I/O error")
    return reason if str(path) in reason else f"{path}: cannot write: {reason}"


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class ModelWeights:
    """The live model's weights and buffers: prefix-free, on the CPU in the checkpoint."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict:
        return model_state(self.model)

    def load_state_dict(self, state: dict) -> None:
        load_model_state(self.model, state)


class BestWeights:
    """The best model's weights, kept in memory (CPU) for the rollbacks: reduce-LR, non-finite losses and
    stage ends reload them. The one home of the best weights; `best.pt` is written from them."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.weights = model_state(model)

    def keep(self) -> None:
        """The model as it is now becomes the best."""
        self.weights = model_state(self.model)

    def restore(self) -> None:
        """Load the best weights into the model."""
        load_model_state(self.model, self.weights)

    def state_dict(self) -> dict:
        return self.weights

    def load_state_dict(self, state: dict) -> None:
        self.weights = state


class OptimizerHolder:
    """The run's one optimizer (`make_optimizer(cfg, model.parameters(), lr)`); `reset(lr)` replaces it by a
    fresh one (no moments), as at a phase change, with `optim.reset_each_stage`, and after a rollback."""

    def __init__(self, cfg, model: nn.Module, lr: float):
        self.cfg, self.model = cfg, model
        self.optimizer = make_optimizer(cfg, model.parameters(), lr)

    def reset(self, lr: float) -> None:
        self.optimizer = make_optimizer(self.cfg, self.model.parameters(), lr)

    def set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Moments and learning rate from `state`; the implementation flags (`foreach`, `fused`) stay this
        optimizer's own, so a checkpoint written by an older bcrdist does not bring back a slower kernel."""
        flags = [{k: g[k] for k in ("foreach", "fused") if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state)
        for group, own in zip(self.optimizer.param_groups, flags):
            group.update(own)


@dataclass
class ProgressCounters:
    """Where the run is: stage index, global epoch, optimizer steps, whether the stage's start evaluation is
    done, the learning rate and the non-finite losses so far (the position inside an epoch is the training
    reader's own state, `training_data.ReaderPosition`)."""

    stage: int = 0
    epoch: int = 0
    step: int = 0
    stage_started: bool = False
    lr: float = 0.0
    nan_failures: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        names = [f.name for f in fields(self)]
        if set(state) != set(names):
            raise DataError(f"progress state: expected the keys {', '.join(names)}, got {', '.join(sorted(state))}")
        for name in names:
            setattr(self, name, state[name])


class RandomState:
    """The generators a run seeds: torch CPU, CUDA (every initialised device), NumPy's global one and Python's
    `random`. Rank 0's state is saved and restored on every rank (all ranks are seeded alike)."""

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state = {"torch": torch.get_rng_state(),
                 "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                           "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
                 "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
        if _cuda_in_use():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state` holds (the 0.1 format saved the torch CPU generator only)."""
        torch.set_rng_state(state["torch"])
        if "numpy" in state:
            s = state["numpy"]
            np.random.set_state((s["kind"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"],
                                 s["cached_gaussian"]))
        if "python" in state:
            s = state["python"]
            random.setstate((s["version"], tuple(s["internal"]), s["gauss_next"]))
        if "cuda" in state and _cuda_in_use():
            for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, device)


def _cuda_in_use() -> bool:
    # asking an uninitialised CUDA for its generators would create contexts on every GPU of a CPU run
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def upgrade_training_state(ck: dict, path) -> dict:
    """A training checkpoint of any known format in the layout of TRAINING_FORMAT (the one conversion). The
    older formats kept the position inside an epoch as a batch counter: it becomes a position-only reader state
    (`ShardedDataset.load_state_dict` takes it as a position in the reader's order)."""
    fmt = ck.get("format")
    if fmt == TRAINING_FORMAT:
        return ck
    if fmt == MODEL_FORMAT or (fmt == V1_FORMAT and "optimizer" not in ck):
        raise DataError(f"{path}: a model checkpoint (best.pt?), not a training state to resume from; "
                        f"schedule.initial_weights fine-tunes from one")
    if fmt == V1_FORMAT:
        ck = {"format": V2_FORMAT, "version": ck.get("version"), "world_size": ck.get("world_size"),
              "config": ck.get("config"), "model_config": ck.get("model_config"),
              "model": ck["model"], "best_model": ck["best_model"], "optimizer": ck["optimizer"],
              "scaler": ck["scaler"],
              "progress": {**ck["position"], "lr": ck["lr"], "nan_failures": ck["nan_failures"]},
              "tracker": {k: ck["tracker"][k] for k in TRACKER_STATE_FIELDS},
              "data": ck["data"], "rng": {"torch": ck["rng"]}}
    if ck.get("format") == V2_FORMAT:
        progress = dict(ck["progress"])
        batch = progress.pop("batch")
        return {**ck, "format": TRAINING_FORMAT, "progress": progress,
                "reader": {"epoch": progress["epoch"], "batch": batch}}
    raise DataError(f"{path}: unknown checkpoint format {fmt!r} (this bcrdist reads {TRAINING_FORMAT!r}, "
                    f"{V2_FORMAT!r} and {V1_FORMAT!r})")


class Checkpointer:
    """Saves and loads the registered parts together. `ctx`: the run's `DistContext` (rank 0 writes)."""

    def __init__(self, states: dict[str, Stateful], ctx):
        self.states, self.ctx = dict(states), ctx

    def state_dict(self) -> dict:
        return {"format": TRAINING_FORMAT, "version": __version__,
                **{name: part.state_dict() for name, part in self.states.items()}}

    def save(self, path: str | Path, **meta) -> None:
        """Rank 0 writes the parts' state plus the plain values `meta` to `path` atomically; all ranks wait.
        A failed write (disk full, I/O error) leaves the previous file and raises CheckpointWriteError, with
        one line naming the file, on every rank."""
        def write() -> None:
            try:
                atomic_save({**meta, **self.state_dict()}, path)
            except OSError as exc:
                raise CheckpointWriteError(write_failure(path, exc)) from None

        on_main(self.ctx, write)

    def load(self, path: str | Path) -> dict:
        """Load every part from `path` (on every rank); returns the whole (upgraded) checkpoint."""
        ck = upgrade_training_state(load_checkpoint(path), path)
        missing = [name for name in self.states if name not in ck]
        if missing:
            raise DataError(f"{path}: no state for {', '.join(missing)} (written by bcrdist {ck.get('version')})")
        for name, part in self.states.items():
            try:
                part.load_state_dict(ck[name])
            except WeightsMismatch as exc:
                # the model of this run is built from its config and data: another network, or data of
                # other sizes (data.path may change on a resume) than the run was trained on
                raise DataError(f"{path}: {exc}; {RUN_MODEL}") from None
        return ck
