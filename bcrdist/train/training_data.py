"""The training run's view of a sharded data set: readers per split, normalisation statistics, batches
on the training device — built from the run plan (`bcrdist.train.plan`), which decided which datasets form
input and target and how every reader preprocesses them.

Splits come from the data set's split files (`bcrdist split`), or, with `data.percent`, from the
original rule computed in memory (train = first int(N·percent), test = the next min(max(n_train, 5000),
N − n_train); validation = the first n_valid test samples, as the original selected on the test set).
Model selection uses at most `data.n_valid` samples: the first ones of the validation split; the
fine-tuning "train" slot uses as many of the first training samples.

Two parts of the training state live here. `TrainingData` itself (`state_dict`) is the identity of the data
the run trains on (data set, training split size, seed: together they fix every epoch's order).
`ReaderPosition` is where the training reader is: the reader's own state (`ShardedDataset.state_dict`: epoch,
batches consumed, and the order settings its resume checks compare), saved and restored through the data
set's public state protocol.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from bcrdist.data.dataset import ShardedDataset
from bcrdist.data.format import read_manifest
from bcrdist.data.preprocess import Preprocess, Preprocessor
from bcrdist.data.splits import load_split, make_splits, split_path
from bcrdist.distributed import DistContext
from bcrdist.errors import ConfigError, DataError
from bcrdist.train.plan import RunPlan, split_not_found

STATS_SAMPLES = 4096
EVAL_BATCH = 64


class ReaderPosition:
    """The training reader's position, a part of the training state (`reader`).

    `state_dict()` is the active training reader's own state; `load_state_dict` keeps a saved state until the
    trainer asks for the batches of an epoch (`attach`): the saved state of that epoch is handed to the new
    reader's `load_state_dict` (which checks that the order settings match and that the global batch is
    unchanged mid-epoch), any other epoch starts at its first batch — a saved state of an earlier epoch is an
    epoch (or a stage) that ended after it was saved.
    """

    def __init__(self):
        self.reader: ShardedDataset | None = None
        self.pending: dict | None = None

    def attach(self, reader: ShardedDataset, epoch: int) -> None:
        """Make `reader` the training reader, positioned for `epoch`."""
        if self.pending is not None and int(self.pending["epoch"]) == epoch:
            try:
                reader.load_state_dict(self.pending)
            except ConfigError as exc:
                raise ConfigError(f"checkpoint.resume: the training reader cannot continue where the checkpoint "
                                  f"stopped: {exc}") from None
        else:
            reader.set_epoch(epoch)
        self.pending = None
        self.reader = reader

    @property
    def batch(self) -> int:
        """Batches of the current epoch consumed so far."""
        return int(self.state_dict()["batch"])

    def consumed(self, epoch: int) -> int:
        """Batches of `epoch` consumed before its batches are asked for: those of a resumed epoch, 0 for an
        epoch not started (the position then still holds the previous epoch's)."""
        state = self.state_dict()
        return int(state["batch"]) if int(state["epoch"]) == epoch else 0

    def state_dict(self) -> dict:
        if self.reader is not None:
            return self.reader.state_dict()
        return dict(self.pending) if self.pending is not None else {"epoch": 0, "batch": 0}

    def load_state_dict(self, state: dict) -> None:
        self.pending = dict(state)
        self.reader = None


class TrainingData:
    """Readers for one rank; see the module docstring."""

    def __init__(self, cfg, ctx: DistContext, plan: RunPlan):
        self.cfg, self.ctx = cfg, ctx
        d = cfg.data
        self.manifest = read_manifest(d.path)
        self.splits = self._resolve_splits()
        # how the reader's refusals name the parts (the readers get index arrays)
        percent = f"data.percent = {d.percent}" if d.percent is not None else None
        self.split_names = {"train": percent and f"train ({percent})" or d.train_split,
                            "val": percent and f"validation ({percent})" or d.val_split,
                            "test": percent and f"test ({percent})" or d.test_split}
        self.split_names["train_subset"] = self.split_names["train"]
        self.choice = plan.data
        self.specs = plan.readers
        self.model_plan = plan.model
        self.train_spec = self.specs["train"]
        self._train_readers: dict[int, ShardedDataset] = {}
        self._eval_readers: dict[tuple, ShardedDataset] = {}
        self.input_shape, self.target_shape = self.choice.input_shape, self.choice.target_shape
        self.target_scale = Preprocessor(self.train_spec, self.manifest).target_scale
        self.position = ReaderPosition()

    def check_splits(self) -> None:
        """Check the shards of every split the run reads (training, validation, test) as their readers will
        (`ShardedDataset.check`); the trainer calls it before the first step, so that a truncated or corrupt
        shard, or a NaN in the test split, stops the run with the reader's one-line error, not after the whole
        training. Each shard is hashed once (the process's readers share the result); its samples are scanned
        for NaN/inf only where the data set's statistics do not already count none."""
        for role in ("train", "val", "test"):
            if role in self.splits:
                spec = self.specs["train" if role == "train" else "eval"]
                ShardedDataset(self.cfg.data.path, split=self.splits[role], shuffle=False, exact=True,
                               batch_size=1, preprocess=spec, split_name=self.split_names[role]).check()

    def _resolve_splits(self) -> dict[str, np.ndarray]:
        d = self.cfg.data
        if d.percent is not None:
            parts = make_splits(self.manifest.num_samples, d.percent)
            return {"train": parts["train"], "val": parts["test"][:d.n_valid], "test": parts["test"]}
        splits = {}
        for role, name in (("train", d.train_split), ("val", d.val_split), ("test", d.test_split)):
            if name == "all":
                splits[role] = np.arange(self.manifest.num_samples, dtype=np.int64)
            elif split_path(self.manifest, name).is_file():
                splits[role] = load_split(self.manifest, name)
            elif role == "train":
                raise split_not_found(self.manifest, role, name)    # refused by the plan already, before the claim
        if "val" not in splits:
            raise split_not_found(self.manifest, "val", d.val_split)
        return splits

    @property
    def n_train(self) -> int:
        return len(self.splits["train"])

    @property
    def n_val(self) -> int:
        return min(len(self.splits["val"]), self.cfg.data.n_valid)

    def has_split(self, name: str) -> bool:
        return name in self.splits

    # ------------------------------------------------------------------ readers
    def _train_reader(self, per_rank_batch: int) -> ShardedDataset:
        if per_rank_batch not in self._train_readers:
            try:
                self._train_readers[per_rank_batch] = ShardedDataset(
                    self.cfg.data.path, split=self.splits["train"], rank=self.ctx.rank,
                    world_size=self.ctx.world_size, seed=self.cfg.seed, shuffle=True, drop_last=True,
                    batch_size=per_rank_batch, preprocess=self.train_spec, preload=self.cfg.data.preload,
                    split_name=self.split_names["train"])
            except ConfigError as exc:
                raise ConfigError(f"schedule.batch_size: {exc}") from None
        return self._train_readers[per_rank_batch]

    def _eval_reader(self, split: str, batch: int, limit: int | None) -> ShardedDataset:
        key = (split, batch, limit)
        if key not in self._eval_readers:
            indices = self.splits[split] if limit is None else self.splits[split][:limit]
            spec = self.specs["train_subset" if split == "train" else "eval"]
            self._eval_readers[key] = ShardedDataset(
                self.cfg.data.path, split=indices, rank=self.ctx.rank, world_size=self.ctx.world_size,
                seed=self.cfg.seed, shuffle=False, exact=True, batch_size=batch, preprocess=spec,
                preload=self.cfg.data.preload, split_name=self.split_names[split])
        return self._eval_readers[key]

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input, target) on the training device, and the global sample indices (B,) on the CPU."""
        dev = self.ctx.device
        return (batch["input"].to(dev, non_blocking=True), batch["target"].to(dev, non_blocking=True),
                batch["index"])

    # ------------------------------------------------------------------ batches
    def train_batches(self, epoch: int, per_rank_batch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """This rank's training batches of `epoch` from where the reader's position is (a resumed epoch
        continues after its last consumed batch): (x (B, Ns, Nd'), y (B, Nt, Nr)) on the device and the samples'
        global indices (B,)."""
        reader = self._train_reader(per_rank_batch)
        self.position.attach(reader, epoch)
        loader = reader.loader(num_workers=self.cfg.data.num_workers, pin_memory=self.ctx.device.type == "cuda")
        for batch in loader:
            yield self._to_device(batch)

    def train_steps(self, per_rank_batch: int) -> int:
        """Batches per epoch on every rank."""
        return self._train_reader(per_rank_batch).num_batches

    def eval_batches(self, split: str, limit: int | None | str = "n_valid") -> Iterator[tuple[torch.Tensor, ...]]:
        """This rank's exact part of an evaluation split ('val', 'test', or 'train_subset'), batches as
        `train_batches`."""
        source = "train" if split == "train_subset" else split
        n = self.cfg.data.n_valid if limit == "n_valid" else limit
        reader = self._eval_reader(source, EVAL_BATCH, n)
        for batch in reader:
            yield self._to_device(batch)

    # ------------------------------------------------------------------ normalisation
    def normalization(self) -> dict:
        """The model's normalisation, identical on every rank: {"shift", "scale"} per input channel (Nd',),
        "out_scale", and the output map "out_gain", "out_bias" (`ScatteringModel.set_normalization`).

        `rms` (bcrdist's): input statistics from the first STATS_SAMPLES training samples (noise-free order of
        the split), scale = RMS per channel (or standard deviation with `input_shift`; ones/zeros with
        `normalize_input` off). `minmax` (the study's): each input part (Re, and Im when both are read) mapped
        from its [min, max] over those samples to [−1, 1]; the network's output o mapped back to η =
        o·half + mid, [mid ± half] the target's range over the data set (its statistics). The output scale
        (training units η / out_scale) is the same in both.
        """
        rule = self.model_plan
        nd = self.input_shape[-1]
        out = {"shift": np.zeros(nd, np.float32), "scale": np.ones(nd, np.float32), "out_scale": self.target_scale,
               "out_gain": 1.0, "out_bias": 0.0}
        if rule.normalization == "rms" and not rule.normalize_input:
            return out
        parts = 2 if self.choice.input_imag else 1
        total, total_sq = np.zeros(nd), np.zeros(nd)
        low, high = np.full(parts, np.inf), np.full(parts, -np.inf)
        count = 0
        for x in self.statistics_inputs():
            total += x.sum(axis=0)
            total_sq += (x * x).sum(axis=0)
            by_part = x.reshape(len(x), parts, nd // parts)
            low, high = np.minimum(low, by_part.min(axis=(0, 2))), np.maximum(high, by_part.max(axis=(0, 2)))
            count += x.shape[0]
        if rule.normalization == "minmax":
            stats = self.manifest.field_statistics(self.choice.target)
            mid, half = (stats["max"] + stats["min"]) / 2, (stats["max"] - stats["min"]) / 2
            if not half > 0:
                raise DataError(f"{self.manifest.path}: data.normalization minmax: the target {self.choice.target!r} "
                                f"is constant ({stats['min']}) over the data set")
            width = np.where(high > low, (high - low) / 2, 1.0)
            out.update(shift=np.repeat((high + low) / 2, nd // parts).astype(np.float32),
                       scale=np.repeat(width, nd // parts).astype(np.float32),
                       out_gain=half / self.target_scale, out_bias=mid / self.target_scale)
            return out
        mean = total / count
        if rule.input_shift:
            shift, scale = mean, np.sqrt(np.maximum(total_sq / count - mean * mean, 0))
        else:
            shift, scale = np.zeros(nd), np.sqrt(total_sq / count)
        out.update(shift=shift.astype(np.float32), scale=np.where(scale > 0, scale, 1.0).astype(np.float32))
        return out

    def statistics_inputs(self) -> Iterator[np.ndarray]:
        """The noise-free network inputs of the first STATS_SAMPLES training samples, (B·Ns, Nd') float64 per
        batch; DataError naming the samples for non-finite values."""
        nd = self.input_shape[-1]
        reader = ShardedDataset(self.cfg.data.path, split=self.splits["train"][:STATS_SAMPLES], shuffle=False,
                                exact=True, batch_size=256,
                                preprocess=Preprocess(input=self.choice.input, target=None,
                                                      input_imag=self.choice.input_imag,
                                                      antipodal=self.choice.antipodal))
        for batch in reader:
            x = batch["input"].double().numpy().reshape(-1, nd)
            if not np.isfinite(x).all():
                raise DataError(f"{self.manifest.root}: non-finite values in {self.choice.input!r} of training samples "
                                f"{batch['index'][0].item()}…{batch['index'][-1].item()}")
            yield x

    def state_dict(self) -> dict:
        """The identity of the training data: data set, training-split size and the order's seed."""
        return {"dataset_id": self.manifest.dataset_id, "num_samples": self.n_train, "seed": self.cfg.seed}

    def load_state_dict(self, state: dict) -> None:
        """Refuse to continue a run on other data (or another order) than it was trained on."""
        saved = {k: state.get(k) for k in ("dataset_id", "num_samples", "seed")}
        now = self.state_dict()
        diff = [f"{k} {saved[k]} (now {now[k]})" for k in saved if saved[k] is not None and saved[k] != now[k]]
        if diff:
            raise DataError(f"{self.manifest.root}: the checkpoint was trained on other data: {', '.join(diff)}")
