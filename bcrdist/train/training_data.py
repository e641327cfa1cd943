"""The training run's view of a sharded data set: readers per split, normalisation statistics, batches
on the training device.

Splits come from the data set's split files (`bcrdist split`), or, with `data.percent`, from the
original rule computed in memory (train = first int(N·percent), test = the next min(max(n_train, 5000),
N − n_train); validation = the first n_valid test samples, as the original selected on the test set).
Model selection uses at most `data.n_valid` samples: the first ones of the validation split; the
fine-tuning "train" slot uses as many of the first training samples.

Noise (`noise_specs`): the training split gets the training noise (`data.noise_model` at `data.noise`, or at
a level drawn per sample from [`data.noise`, `data.noise_max`], a fresh draw per epoch with `data.noise_per_epoch`; the fine-tuning "train" slot sees its fixed draw);
validation and test get the evaluation noise (`data.eval_noise_model` at `data.eval_noise`, null = the
training noise's), one fixed draw per sample, the draw `bcrdist evaluate` and `bcrdist baseline` make.

As a part of the training state (`state_dict`) it is the identity of the data the run trains on (data set,
training split size, seed: together they fix every epoch's order); the position within an epoch is the
trainer's batch counter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from bcrdist.data.format import read_manifest
from bcrdist.data.grid import Layout, layout_of
from bcrdist.data.preprocess import Preprocess, Preprocessor, noise_source
from bcrdist.data.dataset import ShardedDataset
from bcrdist.data.splits import load_split, make_splits, split_path
from bcrdist.distributed import DistContext
from bcrdist.errors import ConfigError, DataError
from bcrdist.models.scattering import ScatteringModel
from bcrdist.train.born_layer import check_bcnn_data, fit_born_layer
from bcrdist.metrics import REPORTED_FOR, SELECTION_DEFAULT, check_metrics_for_target
from bcrdist.transforms import network_input_shape

STATS_SAMPLES = 4096
EVAL_BATCH = 64


@dataclasses.dataclass(frozen=True)
class DataChoice:
    """What the network reads and predicts, resolved against a data set (`resolve_data`): the Preprocess
    fields `input` / `input_imag` / `target` (parts of a complex dataset named `NAME.real`/`NAME.imag`), the
    resolved `antipodal` and `use_imag`, the shapes, the grid's `layout`, the selection `metric` and the
    metrics reported for this target (`reported`)."""

    input: str
    input_imag: str | None
    target: str
    antipodal: bool
    use_imag: bool
    input_shape: tuple[int, int]
    target_shape: tuple[int, int]
    layout: Layout
    metric: str
    reported: tuple[str, ...]


def _dataset(manifest, name: str, key: str, what: str):
    if name not in manifest.datasets:
        raise ConfigError(f"{key}: the data set {manifest.root} has no dataset {name!r} (datasets: "
                          f"{', '.join(manifest.datasets)}); expected {what}")
    spec = manifest.datasets[name]
    if len(spec.shape) != 2:
        raise ConfigError(f"{key}: dataset {name!r} of {manifest.root} has per-sample shape {spec.shape}; expected "
                          f"{what}")
    return spec


def resolve_data(cfg, manifest) -> DataChoice:
    """The `data.input`/`data.target` of `cfg` checked against `manifest`, with the defaults of `data.use_imag`,
    `data.antipodal` and `schedule.metric` resolved; a ConfigError naming the key for a dataset the data set
    lacks, a complex input without a choice of part, antipodal off the periodic `measure` layout, or a metric
    that does not apply to the target."""
    d = cfg.data
    target = _dataset(manifest, d.target, "data.target", "a real dataset (N, angles, radii or pixels)")
    if target.dtype.kind == "c":
        raise ConfigError(f"data.target: dataset {d.target!r} is complex; expected a real target (η)")
    base, _, part = d.input.rpartition(".")
    if d.input in manifest.datasets or part not in ("real", "imag") or base not in manifest.datasets:
        base, part = d.input, None
    spec = _dataset(manifest, base, "data.input", "a dataset (N, angles, detectors)")
    layout = layout_of(manifest, d.target)
    complex_input = spec.dtype.kind == "c"
    if part == "imag" and not complex_input:
        raise ConfigError(f"data.input: dataset {base!r} is real; it has no imaginary part")
    if complex_input and part is None:
        if d.use_imag is None:
            raise ConfigError(f"data.use_imag: the input {base!r} is complex; choose false (its real part only, what "
                              f"the port fed BCR-Net) or true (real and imaginary parts, concatenated along the "
                              f"detector axis)")
        use_imag = bool(d.use_imag)
        x, imag = f"{base}.real", f"{base}.imag" if use_imag else None
    else:
        use_imag = bool(d.use_imag)
        x, imag = d.input, None
        if use_imag and base != "measure":
            raise ConfigError(f"data.use_imag: true adds the imaginary part of a complex input (or `measure_imag` "
                              f"to `measure`); the input {d.input!r} is real: set data.use_imag false")
        if use_imag:
            imag = "measure_imag"
            if imag not in manifest.datasets:
                raise DataError(f"{manifest.path}: data.use_imag is true but the data set has no 'measure_imag'")
    measure_layout = base == "measure" and layout.periodic
    if d.antipodal and not measure_layout:
        grid = "a periodic" if layout.periodic else "an endpoint"
        raise ConfigError(f"data.antipodal: the antipodal preprocessing applies to the `measure` layout on a "
                          f"periodic angle grid; input {d.input!r} on {grid} grid ({layout.source}): set "
                          f"data.antipodal false or null")
    antipodal = measure_layout if d.antipodal is None else bool(d.antipodal)
    metric = SELECTION_DEFAULT[layout.target_kind] if cfg.schedule.metric == "auto" else cfg.schedule.metric
    check_metrics_for_target(metric, layout.target_kind, "schedule.metric")
    return DataChoice(input=x, input_imag=imag, target=d.target, antipodal=antipodal, use_imag=use_imag,
                      input_shape=network_input_shape(spec.shape, imag is not None),
                      target_shape=tuple(int(v) for v in target.shape), layout=layout, metric=metric,
                      reported=REPORTED_FOR[layout.target_kind])


def build_model(cfg, choice, data=None) -> ScatteringModel:
    """The run's model for the resolved data (`resolve_data`): BCR-Net for its input and target sizes, padded
    per `model.pad_to`, with `model.bc_padding` resolved from the angle grid (auto: period on periodic grids,
    zero otherwise); ConfigError for sizes BCR-Net cannot take. With `model.type: bcnn`, BCNN (ConfigError
    unless it reads the complex far field, `check_bcnn_data`), its Born layer made from the run's `data`
    (TrainingData) when given (`bcrdist.train.born_layer.fit_born_layer`; without it the layer is zero, as for
    the size checks before the run directory is claimed)."""
    (ns, nd), (nt, nr) = choice.input_shape, choice.target_shape
    if cfg.model.type == "bcnn":
        check_bcnn_data(cfg, choice)
        model = ScatteringModel.from_config(cfg, (ns, nd), (nt, nr), antipodal=choice.antipodal,
                                            use_imag=choice.use_imag, input=choice.input)
        if data is not None:
            fit_born_layer(model, cfg, data)
        return model
    bc = cfg.model.bc_padding
    if bc == "auto":
        bc = "period" if choice.layout.periodic else "zero"
    try:
        return ScatteringModel.from_config(cfg, (ns, nd), (nt, nr), antipodal=choice.antipodal,
                                           use_imag=choice.use_imag, bc_padding=bc,
                                           input=choice.input)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"model: {exc} (data {cfg.data.path}: input {ns}×{nd}, target {nt}×{nr})") from None


def noise_specs(cfg, choice) -> dict[str, Preprocess]:
    """The Preprocess of each reader: "train" (the training noise, fresh per epoch with
    `data.noise_per_epoch`), "train_subset" (the training noise, fixed: the fine-tuning selection's training
    samples as trained on) and "eval" (validation and test: the evaluation noise, one fixed draw per sample)."""
    d = cfg.data
    common = dict(input=choice.input, target=choice.target, input_imag=choice.input_imag,
                  antipodal=choice.antipodal, normalize_target=d.normalize_output)
    eval_model, eval_level = d.evaluation_noise()
    return {"train": Preprocess(**common, noise=d.noise, noise_model=d.noise_model, noise_max=d.noise_max,
                                noise_fixed=not d.noise_per_epoch),
            "train_subset": Preprocess(**common, noise=d.noise, noise_model=d.noise_model, noise_max=d.noise_max,
                                       noise_fixed=True),
            "eval": Preprocess(**common, noise=eval_level, noise_model=eval_model, noise_fixed=True)}


def check_noise(cfg, manifest, choice) -> None:
    """Refuse a noise model the input cannot take (`complex`/`additive` need the complex far field), naming
    `data.noise_model` or `data.eval_noise_model`."""
    specs = noise_specs(cfg, choice)
    eval_key = "data.noise_model" if cfg.data.eval_noise_model is None else "data.eval_noise_model"
    for key, spec in (("data.noise_model", specs["train"]), (eval_key, specs["eval"])):
        noise_source(manifest, spec, key)


def check_before_claim(cfg) -> None:
    """Refuse, before the run directory is claimed (so nothing is written), a data choice, noise or model size
    the run cannot take: the checks `resolve_data`, `check_noise` and `build_model` make, on every rank alike."""
    manifest = read_manifest(cfg.data.path)
    choice = resolve_data(cfg, manifest)
    check_noise(cfg, manifest, choice)
    build_model(cfg, choice)



class TrainingData:
    """Readers for one rank; see the module docstring."""

    def __init__(self, cfg, ctx: DistContext):
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
        self.choice = resolve_data(cfg, self.manifest)
        c = self.choice
        check_noise(cfg, self.manifest, c)
        self.specs = noise_specs(cfg, c)
        self.train_spec = self.specs["train"]
        self._train_readers: dict[int, ShardedDataset] = {}
        self._eval_readers: dict[tuple, ShardedDataset] = {}
        self.input_shape, self.target_shape = c.input_shape, c.target_shape
        self.target_scale = Preprocessor(self.train_spec, self.manifest).target_scale

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
                raise DataError(f"{split_path(self.manifest, name)}: training split not found; make splits with "
                                f"`bcrdist split {self.manifest.root}` or set data.percent")
        if "val" not in splits:
            raise DataError(f"{split_path(self.manifest, d.val_split)}: validation split not found; make one "
                            f"with `bcrdist split {self.manifest.root} --val N` or set data.percent")
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
    def train_batches(self, epoch: int, per_rank_batch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        """This rank's training batches of `epoch`, after the first `skip` (for mid-epoch resume):
        (x (B, Ns, Nd'), y (B, Nt, Nr)) on the device and the samples' global indices (B,)."""
        reader = self._train_reader(per_rank_batch)
        reader.set_epoch(epoch)
        if skip:
            reader.load_state_dict({**reader.state_dict(), "epoch": epoch, "batch": skip})
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
    def normalization(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(shift, scale) per input channel (Nd',) and the output scale, identical on every rank.

        Input statistics come from the first STATS_SAMPLES training samples (noise-free order of the split);
        scale = RMS per channel (or standard deviation when `input_shift`); all ones/zeros when
        `normalize_input` is off.
        """
        nd = self.input_shape[-1]
        if not self.cfg.data.normalize_input:
            return np.zeros(nd, np.float32), np.ones(nd, np.float32), self.target_scale
        reader = ShardedDataset(self.cfg.data.path, split=self.splits["train"][:STATS_SAMPLES], shuffle=False,
                                exact=True, batch_size=256,
                                preprocess=Preprocess(input=self.choice.input, target=None,
                                                      input_imag=self.choice.input_imag,
                                                      antipodal=self.choice.antipodal))
        total = np.zeros(nd)
        total_sq = np.zeros(nd)
        count = 0
        for batch in reader:
            x = batch["input"].double().numpy().reshape(-1, nd)
            if not np.isfinite(x).all():
                raise DataError(f"{self.manifest.root}: non-finite values in {self.choice.input!r} of training samples "
                                f"{batch['index'][0].item()}…{batch['index'][-1].item()}")
            total += x.sum(axis=0)
            total_sq += (x * x).sum(axis=0)
            count += x.shape[0]
        mean = total / count
        if self.cfg.data.input_shift:
            shift, scale = mean, np.sqrt(np.maximum(total_sq / count - mean * mean, 0))
        else:
            shift, scale = np.zeros(nd), np.sqrt(total_sq / count)
        scale = np.where(scale > 0, scale, 1.0)
        return shift.astype(np.float32), scale.astype(np.float32), self.target_scale

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
