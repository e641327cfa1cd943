"""The spec of an accuracy matrix (YAML; every key is a field below, `bcrdist config reference` lists them):
the training data (a generation config, `--set`s, the split rule), the methods (networks trained from a
training config, with seeds; Born baselines), the noise model and levels, absorbing and other-family test sets,
the metrics, and for `--launcher slurm` the resources of each step kind.

Everything a launch needs is checked here, before anything runs or is submitted: names, configs that exist and
load with their overrides, out-of-distribution and absorbing sets on the training data's grid (so that every
model can read them), seeds, and resources Slurm would accept.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

from bcrdist.config import find_config, from_dict, load_config, setting, to_dict
from bcrdist.errors import ConfigError, shown
from bcrdist.data.format import read_manifest
from bcrdist.launch.outputs import splits_problem
from bcrdist.launch.steps import KINDS
from bcrdist.launch.submit import JobResources, load_resources
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.train.config import SEED_LIMIT, TrainConfig

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# the keys that decide what a sample's arrays mean: a test set must agree with the training data on them
GRID_KEYS = ("box", "k_over_pi", "Na", "Nr", "polar_radius", "layout", "angles", "image_size", "image_points")


def _check_name(value: str, key: str) -> None:
    if not NAME.match(value):
        raise ConfigError(f"{key}: expected a name of letters, digits, '_', '.', '-', got {shown(value)}")


def _check_sets(items: list[str], key: str) -> None:
    for i, item in enumerate(items):
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"{key}[{i}]: expected KEY=VALUE (a `--set` override), got {shown(item)}")


def _load(path: str, cls, sets: list[str], key: str):
    """The config `path` with `sets` applied, or one line naming the spec's key."""
    try:
        find_config(path)
    except ConfigError:
        raise ConfigError(f"{key}: {path}: config file not found") from None
    try:
        return load_config(path, cls, sets)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None


@dataclasses.dataclass
class DataSpec:
    config: str | None = setting(None, help="generation config of the training data (configs/data/*.yaml); "
                                 "the matrix generates, describes and splits it")
    path: str | None = setting(None, help="instead of `config`: an existing data set with its splits (train, val, "
                               "test), used as it is")
    set: list[str] = setting(default_factory=list, help="`bcrdist generate --set` overrides, e.g. samples=4096")
    percent: float = setting(0.8, help="`bcrdist split --percent`", low=0, high=1, low_open=True, high_open=True)
    val: int = setting(128, help="`bcrdist split --val`: validation samples (choose the models and Born's λ)",
                       low=1)


@dataclasses.dataclass
class MethodSpec:
    name: str = setting(help="short name (folder names, plot legends)")
    label: str = setting(help="column heading in the tables")
    kind: Literal["network", "born"] = setting(help="a network trained by `bcrdist train` (any registered "
                                               "`model.type`), or Born (`bcrdist baseline`)")
    config: str | None = setting(None, help="training config (configs/*.yaml) of a network; none for Born")
    checkpoint: str | None = setting(None, help="instead of `config`: a trained network's checkpoint (RUN/"
                                     "checkpoints/best.pt or an export folder), evaluated as it is")
    set: list[str] = setting(default_factory=list, help="`bcrdist train --set` overrides, e.g. data.use_imag=true")
    args: list[str] = setting(default_factory=list, help="extra arguments of every `bcrdist baseline` (Born) or "
                                                          "`bcrdist evaluate` (networks) of this method")
    seeds: list[int] = setting(default_factory=list, help="a network's training seeds, one run each (empty: one "
                               "run at its config's seed); tables give mean ± standard deviation over them",
                               low=0, high=SEED_LIMIT)


@dataclasses.dataclass
class NoiseSpec:
    model: Literal["fan", "complex", "additive"] | None = setting(
        None, help="`--noise-model` of the in-distribution evaluations (none: the CLI's default, fan)")
    levels: list[float] = setting(default_factory=lambda: [0.0], help="noise levels in percent", low=0)


@dataclasses.dataclass
class AbsorptionSpec:
    levels: list[float] = setting(default_factory=list, help="loss tangents α; one test set per level", low=0)
    samples: int = setting(256, help="samples of each absorption test set", low=1)
    seed: int = setting(1001, help="generation seed of the absorption test sets", low=0)


@dataclasses.dataclass
class OodSpec:
    families: dict[str, str] = setting(default_factory=dict, help="test family name → generation config")
    set: list[str] = setting(default_factory=list, help="`bcrdist generate --set` overrides of every family "
                             "(data.set is not applied to them: it usually sets the training data's size)")


@dataclasses.dataclass
class Spec:
    name: str = setting(help="section marker and figure prefix")
    title: str = setting(help="heading of the section")
    data: DataSpec = setting(help="the training data")
    methods: list[MethodSpec] = setting(help="the methods compared, in column order")
    intro: str = setting("", help="text after the heading (the set-up in words)")
    notes: str = setting("", help="closing note after the tables")
    work: str | None = setting(None, help="folder for data, runs and evaluations (default runs/matrix-NAME)")
    noise: NoiseSpec = setting(default_factory=NoiseSpec, help="in-distribution noise")
    absorption: AbsorptionSpec = setting(default_factory=AbsorptionSpec, help="absorbing test sets")
    ood: OodSpec = setting(default_factory=OodSpec, help="out-of-distribution test families (noise 0)")
    metrics: list[Literal["rel_l2", "rel_l1", "weighted"]] = setting(
        default_factory=lambda: ["rel_l2", "rel_l1"], help="reported errors; the first decides 'beats Born'")
    plots: int = setting(0, help="`bcrdist evaluate --plots`: samples plotted per evaluation", low=0)
    resources: dict[str, Any] = setting(default_factory=dict, help="--launcher slurm: what each step kind's job "
                                        "asks for — keys default, generate, stats, split, train, evaluate, "
                                        "baseline, each a mapping of `bcrdist submit`'s site keys (nodes, "
                                        "tasks_per_node, cpus_per_task, gpus_per_node, time, partition, account, "
                                        "qos, constraint, mem, exclusive, sbatch, setup, …) over `default`")

    def validate(self) -> None:
        _check_name(self.name, "name")
        if not self.methods:
            raise ConfigError("methods: expected at least one method")
        if not self.metrics or len(set(self.metrics)) != len(self.metrics):
            raise ConfigError(f"metrics: expected distinct metric names, got {self.metrics}")
        for key, levels in (("noise.levels", self.noise.levels), ("absorption.levels", self.absorption.levels)):
            if len(set(levels)) != len(levels):
                raise ConfigError(f"{key}: levels repeat: {levels}")
        if (self.data.config is None) == (self.data.path is None):
            raise ConfigError("data.config: expected a generation config, or (instead) data.path, an existing data "
                              "set")
        if self.data.path is not None and self.data.set:
            raise ConfigError("data.set: overrides the generation of data.config; data.path is used as it is")
        if self.data.path is not None and self.absorption.levels:
            raise ConfigError("absorption.levels: the absorbing sets are generated from data.config, which this "
                              "spec does not have (it names data.path)")
        _check_sets(self.data.set, "data.set")
        _check_sets(self.ood.set, "ood.set")
        seen = set()
        for i, m in enumerate(self.methods):
            _check_name(m.name, f"methods[{i}].name")
            if m.name in seen:
                raise ConfigError(f"methods[{i}].name: {m.name!r} appears twice")
            seen.add(m.name)
            if m.kind == "born" and (m.config or m.checkpoint):
                raise ConfigError(f"methods[{i}].{'config' if m.config else 'checkpoint'}: Born is not trained")
            if m.kind == "network" and (m.config is None) == (m.checkpoint is None):
                raise ConfigError(f"methods[{i}].config: a network needs a training config or (instead) a "
                                  f"checkpoint")
            if m.checkpoint is not None and (m.set or m.seeds):
                raise ConfigError(f"methods[{i}].{'set' if m.set else 'seeds'}: a checkpoint is evaluated as it "
                                  f"is, not trained")
            if m.kind == "born" and (m.set or m.seeds):
                raise ConfigError(f"methods[{i}].{'set' if m.set else 'seeds'}: Born is not trained; use "
                                  f"methods[{i}].args")
            if len(set(m.seeds)) != len(m.seeds):
                raise ConfigError(f"methods[{i}].seeds: seeds repeat: {m.seeds}")
            _check_sets(m.set, f"methods[{i}].set")
        for name in self.ood.families:
            _check_name(str(name), "ood.families")
        for kind in self.resources:
            if kind not in ("default", *KINDS):
                raise ConfigError(f"resources.{shown(kind, quotes=False)}: expected one of default, "
                                  f"{', '.join(KINDS)}")
            if not isinstance(self.resources[kind], dict):
                raise ConfigError(f"resources.{kind}: expected a mapping of site keys, got "
                                  f"{shown(self.resources[kind])}")


def check_configs(spec: Spec) -> None:
    """Every config the spec names exists and loads with its overrides; every test set shares the training
    data's grid (GRID_KEYS). One line naming the spec's key otherwise."""
    if spec.data.path is not None:
        problem = splits_problem(Path(spec.data.path))
        if problem:
            raise ConfigError(f"data.path: {problem}")
        train = GridView(read_manifest(spec.data.path).provenance.get("config") or {})
    else:
        train = _load(spec.data.config, GenerationConfig, spec.data.set, "data.config")
    for i, m in enumerate(spec.methods):
        if m.checkpoint is not None and not Path(m.checkpoint).exists():
            raise ConfigError(f"methods[{i}].checkpoint: {m.checkpoint}: not found")
    tests = {f"ood.families.{name}": _load(str(path), GenerationConfig, spec.ood.set, f"ood.families.{name}")
             for name, path in spec.ood.families.items()}
    for key, cfg in tests.items():
        differ = [f"{k} {getattr(cfg, k, None)} (training data: {getattr(train, k, None)})" for k in GRID_KEYS
                  if getattr(cfg, k, None) != getattr(train, k, None)]
        if differ:
            raise ConfigError(f"{key}: its samples are not on the training data's grid: {'; '.join(differ)} — "
                              f"set them with ood.set (data.set is not applied to the test families)")
    for i, m in enumerate(spec.methods):
        if m.config is not None:
            _load(m.config, TrainConfig, m.set + [f"seed={s}" for s in m.seeds[:1]], f"methods[{i}]")


class GridView:
    """A data set's recorded generation config (its manifest's provenance) read like a GenerationConfig; a key
    it does not record (an older bcrdist's data set) has the default it had."""

    def __init__(self, config: dict):
        defaults = {f.name: f.default for f in dataclasses.fields(GenerationConfig)
                    if f.default is not dataclasses.MISSING}
        self.config = {**defaults, **config}

    def __getattr__(self, key: str):
        return self.config.get(key)


def step_resources(spec: Spec, kind: str, site: str | None = None) -> JobResources:
    """What a step of `kind` asks Slurm for: the site file `site` (as `bcrdist submit --slurm-config`), then the
    spec's resources.default, then resources.<kind>."""
    base = to_dict(load_resources(site))
    merged = {**base, **spec.resources.get("default", {}), **spec.resources.get(kind, {})}
    where = f"resources.{kind}" if kind in spec.resources else "resources.default"
    try:
        res = from_dict(JobResources, merged, where)
        res.validate()
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith("resources.") else f"{where}: {text}") from None
    return res


def load_spec(path: str) -> Spec:
    spec = load_config(path, Spec, packaged=True)
    check_configs(spec)
    for kind in KINDS:
        step_resources(spec, kind)
    return spec
