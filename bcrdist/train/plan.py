"""The run plan: every decision a training run makes from its config, its data set's manifest and the world
size, made once by one pure function, `make_plan(cfg, manifest, world_size)`.

What the plan decides:

- the data choice (`DataChoice`): which datasets form the input and the target, the resolved
  `data.use_imag` / `data.antipodal`, the shapes, the grid's layout, the selection metric and the reported
  metrics (`resolve_data`);
- the preprocessing of every reader (`reader_specs`): the training split (the training noise, fresh per epoch
  with `data.noise_per_epoch`), the fine-tuning selection's fixed training subset, and validation/test (the
  evaluation noise, one fixed draw per sample);
- the model (`ModelPlan`): the registered network (`model.type`), its constructor arguments resolved for the
  data by the network itself (sizes, padding, levels, …), the Born reconstruction it must be fitted to and the
  noise of that fit, the normalisation rule, and the initial weights;
- the schedule (`SchedulePlan`): both branches of the recipe (the stages of pre-training/fine-tuning, or the
  one stage of `schedule.initial_weights`), the best-model tracker's rules and the selection weights.

Rank 0 makes it before the run directory is claimed, so every refusal (a dataset the data set lacks, a noise
the input cannot take, a network that cannot read these data or take these sizes, a batch the world size does
not divide) happens before anything is written; every rank receives it (`bcrdist.distributed.collective`).
The training data, the model and the trainer are built from it and resolve nothing again; `bcrdist
evaluate` prepares its reader with `evaluation_spec`, from what the checkpoint recorded of the plan.
"""

from __future__ import annotations

import dataclasses
import math

from bcrdist.config import from_dict
from bcrdist.data.grid import TARGET_DATASET, Layout, grid_from_manifest, layout_of
from bcrdist.data.preprocess import Preprocess, noise_source
from bcrdist.data.splits import load_split, original_split_counts, split_path
from bcrdist.errors import ConfigError, DataError
from bcrdist.metrics import REPORTED_FOR, SELECTION_DEFAULT, check_metrics_for_target
from bcrdist.models.registry import NetworkIO, network_class
from bcrdist.train.schedule import FINETUNE_STAGES, PRETRAIN_STAGES, Stage, build_stages, initial_value_stage
from bcrdist.transforms import network_input_shape


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

    @property
    def parts(self) -> str:
        """"complex" when the input is both parts of one complex dataset ([Re | Im] along the detector axis),
        else "real"."""
        if self.input_imag and self.input.endswith(".real") and \
                self.input_imag == self.input.removesuffix(".real") + ".imag":
            return "complex"
        return "real"


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """The model of a run: `type` (registered), `config` (the network's constructor arguments, without a
    Born definition: that is fitted when the model is built), `born` (the `BornRequest` fields of the Born fit,
    or None) with the noise model, level and seed of the validation far fields it is fitted on, the data fields
    and sizes the `ScatteringModel` records, the normalisation rule and the initial weights."""

    type: str
    config: dict
    born: dict | None
    born_noise: tuple[str, float]
    antipodal: bool
    use_imag: bool
    input: str
    target: str
    data_input: tuple[int, int]
    data_output: tuple[int, int]
    normalization: str
    normalize_input: bool
    input_shift: bool
    normalize_output: bool
    initial_weights: str | None


@dataclasses.dataclass(frozen=True)
class SchedulePlan:
    """The stages of the run, the `BestModelTracker` keyword arguments (all but the slot weight), and the
    selection weights: `fixed_weight` in the initial-weights branch (1: validation alone), else 0 in
    pre-training (the output head alone) and `test_weight` in fine-tuning."""

    stages: tuple[Stage, ...]
    tracker: dict
    fixed_weight: float | None
    test_weight: float

    def selection_weight(self, stage: Stage) -> float:
        if self.fixed_weight is not None:
            return self.fixed_weight
        return 0.0 if stage.phase == "pretrain" else self.test_weight


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything `make_plan` decided (see the module docstring)."""

    data: DataChoice
    readers: dict[str, Preprocess]
    model: ModelPlan
    schedule: SchedulePlan
    world_size: int


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
            if manifest.datasets[imag].dtype.kind == "c":
                raise DataError(f"{manifest.path}: dataset 'measure_imag' holds complex numbers; it must hold the "
                                f"imaginary part of `measure`, real numbers")
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


def reader_specs(cfg, choice: DataChoice, manifest) -> dict[str, Preprocess]:
    """The Preprocess of each reader: "train" (the training noise, fresh per epoch with
    `data.noise_per_epoch`), "train_subset" (the training noise, fixed: the fine-tuning selection's training
    samples as trained on) and "eval" (validation and test: the evaluation noise, one fixed draw per sample).
    A noise model the input cannot take (`complex`/`additive` need the complex far field) is refused naming
    `data.noise_model` or `data.eval_noise_model`."""
    d = cfg.data
    common = dict(input=choice.input, target=choice.target, input_imag=choice.input_imag,
                  antipodal=choice.antipodal, normalize_target=d.normalize_output)
    eval_model, eval_level = d.evaluation_noise()
    specs = {"train": Preprocess(**common, noise=d.noise, noise_model=d.noise_model, noise_max=d.noise_max,
                                 noise_fixed=not d.noise_per_epoch),
             "train_subset": Preprocess(**common, noise=d.noise, noise_model=d.noise_model, noise_max=d.noise_max,
                                        noise_fixed=True),
             "eval": Preprocess(**common, noise=eval_level, noise_model=eval_model, noise_fixed=True)}
    eval_key = "data.noise_model" if d.eval_noise_model is None else "data.eval_noise_model"
    for key, spec in (("data.noise_model", specs["train"]), (eval_key, specs["eval"])):
        noise_source(manifest, spec, key)
    return specs


def _network_section(cfg, cls):
    """The config section of network class `cls`: `model.<config_section>`, the `model` section itself, or
    `model.options` parsed by its `config_class` (networks registered outside bcrdist)."""
    m = cfg.model
    if cls.config_section is None:
        if cls.config_class is None:
            if m.options:
                raise ConfigError(f"model.options: model.type {m.type!r} takes no options, got "
                                  f"{', '.join(sorted(m.options))}")
            return None
        return from_dict(cls.config_class, dict(m.options), "model.options")
    if m.options:
        raise ConfigError(f"model.options: applies to networks registered outside bcrdist; model.type {m.type!r} "
                          f"is configured in model.{cls.config_section or ''}".rstrip("."))
    return getattr(m, cls.config_section) if cls.config_section else m


def model_plan(cfg, choice: DataChoice, manifest) -> ModelPlan:
    """The run's model (see `ModelPlan`): the network `model.type` checked against what the data give it (the
    input parts and the target kind it needs) and resolved for their sizes; a Born-based network's fit
    checked against the data set's grid."""
    m, d = cfg.model, cfg.data
    cls = network_class(m.type)
    io = NetworkIO(n_input=tuple(choice.input_shape), n_output=tuple(choice.target_shape), parts=choice.parts,
                   target_kind=choice.layout.target_kind, periodic=choice.layout.periodic)
    if cls.input_parts == "complex" and io.parts != "complex":
        raise ConfigError(f"model.type: {m.type} reconstructs from the complex far field (its real and imaginary "
                          f"parts); set data.input: farfield and data.use_imag: true (got data.input {d.input!r}, "
                          f"data.use_imag {d.use_imag})")
    if cls.input_parts == "real" and io.parts == "complex":
        raise ConfigError(f"model.type: {m.type} reads one real input; set data.use_imag: false (the real part) "
                          f"or name one part, e.g. data.input: {d.input}.real")
    if io.target_kind not in cls.targets:
        raise ConfigError(f"data.target: {m.type} predicts {' or '.join(cls.targets)} images; the target "
                          f"{d.target!r} of {manifest.root} is {io.target_kind}")
    if m.pad_to is not None and cls.config_section != "":
        # BCR-Net's other keys in `model` are ignored by other networks; padding would change what the run reads
        raise ConfigError(f"model.pad_to: applies to BCR-Net only; {m.type} works at the data's sizes")
    section = _network_section(cfg, cls)
    config = cls.resolve(section, io)
    born = cls.born_request(section, config)
    if born is not None:
        geometry = grid_from_manifest(manifest)
        expected = TARGET_DATASET[geometry.target]
        if d.target != expected:
            raise ConfigError(f"data.target: {m.type}'s Born layer reconstructs the {geometry.target} target "
                              f"{expected!r} of {manifest.root}, not {d.target!r}")
        if born.get("method") == "lsqr" and geometry.target != "cartesian":
            raise ConfigError(f"model.type: {m.type}'s damped least squares (the study's Born step) works on "
                              f"Cartesian images; {manifest.root} has a {geometry.target} target")
    return ModelPlan(type=m.type, config=config, born=born, born_noise=d.evaluation_noise(),
                     antipodal=choice.antipodal, use_imag=choice.use_imag, input=choice.input, target=choice.target,
                     data_input=tuple(choice.input_shape), data_output=tuple(choice.target_shape),
                     normalization=d.normalization, normalize_input=d.normalize_input, input_shift=d.input_shift,
                     normalize_output=d.normalize_output, initial_weights=cfg.schedule.initial_weights)


def schedule_plan(cfg, world_size: int) -> SchedulePlan:
    """Branch B (`schedule.initial_weights`, the original's `--initialvalue`): one fine-tuning stage at lr/10,
    batch `initial_batch_size`, patience max(epochs/40, 40), reduce-LR by √0.1 after 20 epochs (or
    `patience_lr`), selection on validation alone. Branch A: the stages of `build_stages` and the config's
    rules. ConfigError for a stage whose global batch the world size does not divide."""
    s, lr = cfg.schedule, cfg.optim.lr
    if s.initial_weights:
        stages = tuple(initial_value_stage(lr, s.epochs, s.initial_batch_size))
        tracker = dict(patience=max(s.epochs // 40, 40), reduce_lr=True, patience_lr=s.patience_lr or 20,
                       factor=math.sqrt(0.1))
        fixed = 1.0
    else:
        stages = tuple(build_stages(
            s.batch_size, lr, s.epochs, pretrain=s.pretrain, finetune=s.finetune, keras_compat=s.keras_compat,
            pretrain_stages=tuple(PRETRAIN_STAGES if s.pretrain_stages is None else s.pretrain_stages),
            finetune_stages=tuple(FINETUNE_STAGES if s.finetune_stages is None else s.finetune_stages)))
        tracker = dict(patience=s.patience, reduce_lr=s.reduce_lr, patience_lr=s.patience_lr,
                       factor=s.reduce_lr_factor)
        fixed = None
    tracker.update(rel_threshold=s.rel_threshold, min_lr=lr / 100, keras_compat=s.keras_compat)
    for stage in stages:
        if stage.global_batch % world_size:
            raise ConfigError(f"schedule.batch_size: stage {stage.name} has global batch {stage.global_batch}, "
                              f"not divisible by the world size {world_size}")
    return SchedulePlan(stages=stages, tracker=tracker, fixed_weight=fixed, test_weight=s.test_weight)


def split_not_found(manifest, role: str, name: str) -> DataError:
    """The one-line refusal of a run whose training or validation split file `name` does not exist."""
    if role == "train":
        return DataError(f"{split_path(manifest, name)}: training split not found; make splits with "
                         f"`bcrdist split {manifest.root}` or set data.percent")
    return DataError(f"{split_path(manifest, name)}: validation split not found; make one with "
                     f"`bcrdist split {manifest.root} --val N` or set data.percent")


def check_training_split(cfg, manifest, stages) -> None:
    """The training and validation split files exist (DataError naming the missing one), and every stage's
    global batch fits in the training split (batches are full ones: a split smaller than one batch trains on
    nothing); ConfigError naming the batch key. With `schedule.max_steps` only the first stage's: a smoke run
    may stop before the later ones. The split's size comes from `data.percent`, or from its file (read and
    checked here, a small JSON file)."""
    d = cfg.data
    if d.percent is None:
        for role, name in (("train", d.train_split), ("val", d.val_split)):
            if name != "all" and not split_path(manifest, name).is_file():
                raise split_not_found(manifest, role, name)
    if d.percent is not None:
        n, name = original_split_counts(manifest.num_samples, d.percent)[0], f"(data.percent = {d.percent})"
    elif d.train_split == "all":
        n, name = manifest.num_samples, "(all samples)"
    else:
        n, name = len(load_split(manifest, d.train_split)), f"{d.train_split!r}"
    key = "schedule.initial_batch_size" if cfg.schedule.initial_weights else "schedule.batch_size"
    for stage in stages[:1] if cfg.schedule.max_steps is not None else stages:
        if stage.global_batch > n:
            raise ConfigError(f"{key}: stage {stage.name} has global batch {stage.global_batch}, more than the {n} "
                              f"samples of the training split {name}; batches are full ones, so it would train "
                              f"on nothing")


def make_plan(cfg, manifest, world_size: int) -> RunPlan:
    """The run plan of training config `cfg` on the data set of `manifest` with `world_size` ranks (see the
    module docstring); ConfigError or DataError, one line naming the key, for anything the run cannot do."""
    choice = resolve_data(cfg, manifest)
    return RunPlan(data=choice, readers=reader_specs(cfg, choice, manifest),
                   model=model_plan(cfg, choice, manifest), schedule=schedule_plan(cfg, world_size),
                   world_size=int(world_size))


def make_training_plan(cfg, manifest, world_size: int) -> RunPlan:
    """`make_plan` for a run that trains: its training split must also fill the stages' batches
    (`check_training_split`), refused with the plan's other refusals, before the run directory is claimed. (A
    plan alone also serves what trains nothing: a model for evaluation, tests.)"""
    plan = make_plan(cfg, manifest, world_size)
    check_training_split(cfg, manifest, plan.schedule.stages)
    return plan


def evaluation_spec(record: dict, noise: float, noise_model: str) -> Preprocess:
    """The preprocessing `bcrdist evaluate` reads a data set with, from a checkpoint's model record
    (`ScatteringModel.record()`: the plan's data fields): the input and its second part as the run read them,
    the antipodal pairing, targets in physical units, `noise` of `noise_model`, one fixed draw per sample."""
    x = record.get("input", "measure")
    if x.endswith(".real"):
        imag = (x.removesuffix(".real") + ".imag") if record["use_imag"] else None
    else:
        imag = "measure_imag" if record["use_imag"] else None
    return Preprocess(input=x, target=record.get("target", "coe"), input_imag=imag, antipodal=record["antipodal"],
                      normalize_target=False, noise=noise, noise_model=noise_model, noise_fixed=True)
