#!/usr/bin/env python
"""Run an accuracy matrix through the CLI and write its section of docs/results.md, with plots.

    python tools/accuracy_matrix.py --spec configs/experiments/NAME.yaml [--work DIR] \\
        [--results docs/results.md] [--nproc 2] [--dry-run]

The spec (YAML; every key in `Spec` below) names the training data (a generation config, `--set`s, the split
rule), the methods (BCR-Net and BCNN from configs/*.yaml with `--set`s; Born, `bcrdist baseline` with λ chosen on
the training data's validation split), the noise model and levels, the absorption levels (test sets generated
from the training config with `--set family.absorption=[α]`, another seed) and other families (generation
configs). Every step is one command (`bcrdist generate/stats/split/train/evaluate/baseline`; `torchrun` and
`mpiexec` when --nproc > 1), printed before it runs. A step whose output is complete (manifest, statistics,
splits, results.json, metrics.json, a baseline's JSON) is skipped, so a rerun continues where it stopped
(`--resume auto`); WORK/matrix.json records which command made each output (another one's is refused).

The section lives between `<!-- matrix: NAME -->` and `<!-- /matrix: NAME -->` in the results file and is
replaced atomically (appended when absent; everything else in the file is kept byte for byte); plots go to
figures/NAME-{noise,ood,absorption}.png next to it. Exit: 0 done, 1 a step failed, 2 a bad spec or results file.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Literal

from bcrdist.config import find_config, load_config, setting
from bcrdist.errors import ConfigError
from bcrdist.fileio import atomic_write_bytes, atomic_write_json, json_safe

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
METRICS = {"rel_l2": "rel. L2", "rel_l1": "rel. L1", "weighted": "weighted"}


class SpecError(Exception):
    """A bad spec or results file: one line, exit status 2."""


def _check_name(value: str, key: str) -> None:
    if not NAME.match(value):
        raise ConfigError(f"{key}: expected a name of letters, digits, '_', '.', '-', got {value!r}")


def _check_sets(items: list[str], key: str) -> None:
    for i, item in enumerate(items):
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"{key}[{i}]: expected KEY=VALUE (a `--set` override), got {item!r}")


def _check_config(path: str | None, key: str) -> None:
    if path is not None:
        try:
            find_config(path)
        except ConfigError:
            raise ConfigError(f"{key}: {path}: config file not found") from None


@dataclasses.dataclass
class DataSpec:
    config: str = setting(help="generation config of the training data (configs/data/*.yaml)")
    set: list[str] = setting(default_factory=list, help="`bcrdist generate --set` overrides, e.g. samples=4096")
    percent: float = setting(0.8, help="`bcrdist split --percent`", low=0, high=1, low_open=True, high_open=True)
    val: int = setting(128, help="`bcrdist split --val`: validation samples (choose the models and Born's λ)",
                       low=1)

    def validate(self) -> None:
        _check_config(self.config, "data.config")
        _check_sets(self.set, "data.set")


@dataclasses.dataclass
class MethodSpec:
    name: str = setting(help="short name (folder names, plot legends)")
    label: str = setting(help="column heading in the tables")
    kind: Literal["network", "born"] = setting(help="a network trained by `bcrdist train` (any registered "
                                               "`model.type`), or Born (`bcrdist baseline`)")
    config: str | None = setting(None, help="training config (configs/*.yaml) of a network; none for Born")
    set: list[str] = setting(default_factory=list, help="`bcrdist train --set` overrides, e.g. data.use_imag=true")
    args: list[str] = setting(default_factory=list, help="extra arguments of every `bcrdist baseline` (Born) or "
                                                          "`bcrdist evaluate` (networks) of this method")


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
    set: list[str] = setting(default_factory=list, help="`bcrdist generate --set` overrides of every family")

    def validate(self) -> None:
        for name, config in self.families.items():
            _check_name(str(name), "ood.families")
            _check_config(str(config), f"ood.families.{name}")
        _check_sets(self.set, "ood.set")


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

    def validate(self) -> None:
        _check_name(self.name, "name")
        if not self.methods:
            raise ConfigError("methods: expected at least one method")
        if not self.metrics or len(set(self.metrics)) != len(self.metrics):
            raise ConfigError(f"metrics: expected distinct metric names, got {self.metrics}")
        for key, levels in (("noise.levels", self.noise.levels), ("absorption.levels", self.absorption.levels)):
            if len(set(levels)) != len(levels):
                raise ConfigError(f"{key}: levels repeat: {levels}")
        seen = set()
        for i, m in enumerate(self.methods):
            _check_name(m.name, f"methods[{i}].name")
            if m.name in seen:
                raise ConfigError(f"methods[{i}].name: {m.name!r} appears twice")
            seen.add(m.name)
            if (m.kind == "born") != (m.config is None):
                raise ConfigError(f"methods[{i}].config: " + ("Born takes no training config" if m.config else
                                                              f"a {m.kind} method needs a training config"))
            if m.kind == "born" and m.set:
                raise ConfigError(f"methods[{i}].set: Born is not trained; use methods[{i}].args")
            _check_config(m.config, f"methods[{i}].config")
            _check_sets(m.set, f"methods[{i}].set")


def load_spec(path: str) -> Spec:
    try:
        return load_config(path, Spec)
    except ConfigError as exc:
        raise SpecError(str(exc)) from None


def launcher(tool: str, *module: str) -> list[str]:
    """`tool` when the one on PATH belongs to this Python's environment, else the one next to this interpreter,
    else `python -m module...` (so the commands printed are exactly the ones run)."""
    here = Path(sys.executable).absolute().parent
    exe = shutil.which(tool)
    if exe and Path(exe).absolute().parent == here:
        return [tool]
    if (here / tool).is_file():
        return [str(here / tool)]
    return [sys.executable, "-m", *module]


def shown(command: list[str]) -> str:
    """A command as the results list it: this environment's tools by name (`bcrdist`, `torchrun`, `mpiexec`)."""
    here = Path(sys.executable).absolute().parent
    return shlex.join([Path(a).name if Path(a).parent == here and Path(a).is_file() else a for a in command])


@dataclasses.dataclass
class Step:
    """One command: `what` names it, `args` are bcrdist's arguments (what WORK/matrix.json records), `done`
    says whether `output` is complete."""
    what: str
    args: list[str]
    output: Path
    done: Callable[[], bool]
    launch: list[str] = dataclasses.field(default_factory=list)


def json_of(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def manifest_of(data: Path) -> dict | None:
    """The data set's manifest when it and every shard it lists exist (`bcrdist generate` writes it last)."""
    manifest = json_of(data / "manifest.json")
    try:
        return manifest if manifest and all((data / s["file"]).is_file() for s in manifest["shards"]) else None
    except (KeyError, TypeError):
        return None


def splits_done(data: Path) -> bool:
    manifest = manifest_of(data)
    return manifest is not None and all((json_of(data / "splits" / f"{name}.json") or {}).get("dataset_id") ==
                                        manifest.get("dataset_id") for name in ("train", "val", "test"))


def _g(x: float) -> str:
    return f"{x:g}"


@dataclasses.dataclass
class Condition:
    """One row: a test set (data, split) at one noise level."""
    key: str
    group: Literal["noise", "absorption", "ood"]
    label: str
    data: Path
    split: str
    noise: float
    value: float | str


class Matrix:
    """The steps of one spec, in order, and where their outputs go."""

    def __init__(self, spec: Spec, work: Path, nproc: int):
        self.spec, self.work, self.nproc = spec, work, nproc
        self.bcrdist = launcher("bcrdist", "bcrdist")
        self.train_data = work / "data-train"
        self.steps: list[Step] = []
        self.conditions: list[Condition] = []
        self._plan()

    def _launch(self, command: str) -> list[str]:
        if self.nproc > 1 and command == "train":
            return launcher("torchrun", "torch.distributed.run") + [
                "--standalone", f"--nproc-per-node={self.nproc}", "-m", "bcrdist"]
        if self.nproc > 1 and command == "generate":
            return launcher("mpiexec", "mpiexec") + ["-n", str(self.nproc)] + self.bcrdist
        return self.bcrdist

    def _add(self, what: str, args: list[str], output: Path, done: Callable[[], bool]) -> None:
        self.steps.append(Step(what, [str(a) for a in args], output, done, self._launch(args[0])))

    def _generate(self, what: str, config: str, sets: list[str], out: Path) -> None:
        args = ["generate", "--config", config, *(a for s in sets for a in ("--set", s)), "--out", out, "--quiet"]
        self._add(what, args, out / "manifest.json", lambda: manifest_of(out) is not None)

    def _plan(self) -> None:
        s, w, data = self.spec, self.work, self.train_data
        self._generate("generate the training data", s.data.config, s.data.set, data)
        self._add("statistics of the training data", ["stats", data], data / "manifest.json",
                  lambda: (manifest_of(data) or {}).get("statistics") is not None)
        self._add("split the training data", ["split", data, "--percent", _g(s.data.percent), "--val", s.data.val],
                  data / "splits", lambda: splits_done(data))
        model = s.noise.model or "fan"
        for level in s.noise.levels:
            self.conditions.append(Condition(f"noise{_g(level)}", "noise", f"in distribution, {model} noise "
                                             f"{_g(level)} %", data, "test", level, level))
        for level in s.absorption.levels:
            out = w / f"data-absorption{_g(level)}"
            sets = s.data.set + [f"samples={s.absorption.samples}", f"seed={s.absorption.seed}",
                                 f"family.absorption=[{_g(level)}]"]
            self._generate(f"generate the absorption-{_g(level)} test set", s.data.config, sets, out)
            self.conditions.append(Condition(f"absorption{_g(level)}", "absorption", f"absorption α = {_g(level)}",
                                             out, "all", 0.0, level))
        for name, config in s.ood.families.items():
            out = w / f"data-ood-{name}"
            self._generate(f"generate the out-of-distribution set {name}", config, s.ood.set, out)
            self.conditions.append(Condition(f"ood-{name}", "ood", f"test family {name}, noise 0", out, "all",
                                             0.0, name))
        for m in s.methods:
            if m.kind == "network":
                run = w / "runs" / m.name
                args = ["train", "--config", m.config, "--set", f"data.path={data}", "--set", f"run_dir={run}",
                        *(a for o in m.set for a in ("--set", o)), "--resume", "auto"]
                self._add(f"train {m.name}", args, run / "results.json",
                          lambda path=run / "results.json": json_of(path) is not None)
        for c in self.conditions:
            noise = ["--noise", _g(c.noise)] + (["--noise-model", s.noise.model]
                                                if s.noise.model and c.group == "noise" else [])
            for m in s.methods:
                out = self.output(m, c)
                if m.kind == "born":
                    args = ["baseline", "--data", c.data, "--split", c.split, "--val-data", data, "--val-split",
                            "val", *noise, *m.args, "--out", out]
                else:
                    args = ["evaluate", "--checkpoint", w / "runs" / m.name / "checkpoints" / "best.pt", "--data",
                            c.data, "--split", c.split, *noise, "--plots", s.plots, *m.args, "--out", out.parent]
                self._add(f"{'baseline' if m.kind == 'born' else 'evaluate'} {m.name} on {c.key}", args, out,
                          lambda path=out: json_of(path) is not None)

    def output(self, method: MethodSpec, c: Condition) -> Path:
        base = self.work / "eval" / method.name
        return base / f"{c.key}.json" if method.kind == "born" else base / c.key / "metrics.json"


# ---------------------------------------------------------------------------------------------- running
class Ledger:
    """WORK/matrix.json: step → the bcrdist arguments that made its output, rewritten atomically after each step."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.made = json.loads(path.read_text())["made"]
        except (OSError, ValueError, KeyError):
            self.made = {}

    def check(self, step: Step) -> None:
        recorded = self.made.get(step.what)
        if recorded is not None and recorded != step.args:
            raise SpecError(f"{step.what}: {step.output} was made by another command ({shlex.join(recorded)}); "
                            f"delete it or use another --work")

    def record(self, step: Step) -> None:
        self.made[step.what] = step.args
        atomic_write_json(self.path, {"made": self.made})


def run_steps(matrix: Matrix, dry_run: bool) -> tuple[int, list[str]]:
    """Run the steps not yet done; returns (status, the commands of the matrix, run now or before)."""
    ledger = Ledger(matrix.work / "matrix.json")
    commands = []
    for step in matrix.steps:
        command = step.launch + step.args
        text = shlex.join(command)
        commands.append(shown(command))
        if step.done():
            ledger.check(step)
            if not dry_run and step.what not in ledger.made:
                ledger.record(step)
            print(f"# done, skipped: {text}", flush=True)
            continue
        print(f"$ {text}", flush=True)
        if dry_run:
            continue
        status = subprocess.run(command).returncode
        if status != 0 or not step.done():
            why = f"exit status {status}" if status != 0 else f"exit status 0 but {step.output} is not complete"
            print(f"accuracy_matrix: step '{step.what}' failed ({why}): {text}", file=sys.stderr)
            return 1, commands
        ledger.record(step)
    return 0, commands


# ---------------------------------------------------------------------------------------------- the results
def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpecError(f"{path}: cannot read ({exc})") from None


def collect(matrix: Matrix) -> dict:
    """Means of the spec's metrics per (method, condition), and the data and run facts."""
    spec = matrix.spec
    errors: dict[str, dict[str, dict]] = {}
    for m in spec.methods:
        errors[m.name] = {}
        for c in matrix.conditions:
            path = matrix.output(m, c)
            doc = read_json(path)
            row = {}
            for metric in spec.metrics:
                if metric not in doc.get("metrics", {}):
                    raise SpecError(f"metrics: {metric!r} is not in {path} (it has {sorted(doc.get('metrics', {}))}; "
                                    f"'weighted' exists on polar targets only)")
                row[metric] = doc["metrics"][metric]["mean"]
                row[f"{metric}_se"] = doc["metrics"][metric]["std"] / max(doc["metrics"][metric]["count"], 1) ** 0.5
            row["count"] = doc["metrics"][spec.metrics[0]]["count"]
            if "lambda_relative" in doc:
                row["lambda_relative"] = doc["lambda_relative"]
            errors[m.name][c.key] = row
    runs = {}
    for m in spec.methods:
        if m.kind == "network":
            res = read_json(matrix.work / "runs" / m.name / "results.json")
            runs[m.name] = {k: res.get(k) for k in ("parameters", "n_train", "epochs", "steps", "world_size",
                                                    "wall_time_s", "stop_reason")}
            runs[m.name]["type"] = (res.get("model") or {}).get("type", "bcrnet")
    manifest = read_json(matrix.train_data / "manifest.json")
    sizes = {name: read_json(matrix.train_data / "splits" / f"{name}.json")["num_samples"]
             for name in ("train", "val", "test")}
    test_sets = {c.key: read_json(c.data / "manifest.json")["num_samples"] for c in matrix.conditions
                 if c.group != "noise"}
    return {"errors": errors, "runs": runs, "data": {"num_samples": manifest["num_samples"],
            "config": manifest["provenance"].get("config", {}), "grid": manifest.get("grid"), "splits": sizes},
            "test_sets": test_sets}


def beats_born(spec: Spec, row: dict[str, dict]) -> str | None:
    """Best network vs best Born on the first metric: 'yes'/'no' below/above by more than two standard errors of
    the difference (√(se₁² + se₂²), se = std/√count: unpaired, conservative), else 'tie'; None without both."""
    metric = spec.metrics[0]
    nets = [row[m.name] for m in spec.methods if m.kind == "network"]
    born = [row[m.name] for m in spec.methods if m.kind == "born"]
    if not nets or not born:
        return None
    net, ref = min(nets, key=lambda r: r[metric]), min(born, key=lambda r: r[metric])
    margin = 2 * math.hypot(net[f"{metric}_se"], ref[f"{metric}_se"])
    return "yes" if net[metric] < ref[metric] - margin else "no" if net[metric] > ref[metric] + margin else "tie"


def _mins(seconds) -> str:
    return "–" if seconds is None else (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min")


def data_facts(matrix: Matrix, facts: dict) -> str:
    spec, d = matrix.spec, facts["data"]
    cfg, grid = d["config"], d["grid"] or {}
    target = (f"a {cfg.get('image_size')}×{cfg.get('image_size')} image" if grid.get("target") == "cartesian"
              else f"a {cfg.get('Na')}×{cfg.get('Nr')} polar target")
    gen = shlex.join(["bcrdist", "generate", "--config", spec.data.config, *(a for s in spec.data.set
                                                                                for a in ("--set", s))])
    family = cfg.get("family", {})
    text = (f"Training data `{gen}`: {d['num_samples']} samples of the `{family.get('name')}` family "
            f"(absorption {family.get('absorption', [0.0])}), n = {cfg.get('n')}, box {cfg.get('box')}, "
            f"k = {3.141592653589793 * cfg.get('k_over_pi', 0):.4g} (k/π = {cfg.get('k_over_pi')}), "
            f"Na = {cfg.get('Na')} directions ({cfg.get('angles', 'periodic')} grid, {cfg.get('layout', 'polar')} "
            f"layout), {target}; split train {d['splits']['train']} / val {d['splits']['val']} / test "
            f"{d['splits']['test']} (`bcrdist split --percent {_g(spec.data.percent)} --val {spec.data.val}`).")
    sets = []
    if spec.absorption.levels:
        sets.append(f"absorbing sets (the training config with `--set family.absorption=[α]`, "
                    f"{spec.absorption.samples} samples each, seed {spec.absorption.seed})")
    for name, config in spec.ood.families.items():
        sets.append(f"{name} (`{config}`, {facts['test_sets'][f'ood-{name}']} samples)")
    if sets:
        text += (" Test sets beyond the test split, each evaluated whole at noise 0: " + "; ".join(sets) +
                 (f" (overrides {', '.join(spec.ood.set)})" if spec.ood.set else "") + ".")
    borns = [m for m in spec.methods if m.kind == "born"]
    if any("lsqr" not in m.args for m in borns):
        text += (" Born (Tikhonov): Tikhonov-regularised Born inversion (`bcrdist baseline`), λ chosen on the "
                 "training data's validation split at the row's noise level.")
    if any("lsqr" in m.args for m in borns):
        text += (" Born (LSQR): the study's damped least squares on its Born matrix (`bcrdist baseline --method "
                 "lsqr --damp D`), a fixed damping.")
    if borns:
        text += " The extra test sets are used neither in training nor in choosing λ or a model."
    return text


def markdown(matrix: Matrix, facts: dict, commands: list[str], figures: dict[str, str], tool_command: str) -> str:
    spec = matrix.spec
    lines = [f"## {spec.title}", ""]
    if spec.intro.strip():
        lines += [spec.intro.strip(), ""]
    lines += [data_facts(matrix, facts) + f" Made {time.strftime('%Y-%m-%d')}.", ""]
    lines += ["| method | kind | training | parameters | training samples | epochs | steps | processes | "
              "training time |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for m in spec.methods:
        if m.kind == "born":
            lines.append(f"| {m.label} | born | `{shlex.join(['bcrdist', 'baseline', *m.args])}` | – | – | – | – | – "
                         f"| – |")
            continue
        r = facts["runs"][m.name]
        train = shlex.join([m.config, *(a for s in m.set for a in ("--set", s))])
        lines.append(f"| {m.label} | {r['type']} | `{train}` | {r['parameters']:,} | {r['n_train']} | {r['epochs']} | "
                     f"{r['steps']} | {r['world_size']} | {_mins(r['wall_time_s'])} |")
    errors = facts["errors"]
    rows = [(c, {m.name: errors[m.name][c.key] for m in spec.methods}) for c in matrix.conditions]
    verdicts = [beats_born(spec, row) for _, row in rows]
    head = ["condition", "samples"] + [f"{m.label} {METRICS[k]}" for m in spec.methods for k in spec.metrics]
    if verdicts and verdicts[0] is not None:
        head.append("best network beats Born")
    lines += ["", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for (c, row), verdict in zip(rows, verdicts):
        cells = [c.label, str(row[spec.methods[0].name]["count"])]
        cells += [f"{100 * row[m.name][k]:.1f} %" for m in spec.methods for k in spec.metrics]
        lines.append("| " + " | ".join(cells + ([verdict] if verdict is not None else [])) + " |")
    if verdicts and verdicts[0] is not None:
        lost = [f"{c.label} ({v})" for (c, _), v in zip(rows, verdicts) if v != "yes"]
        lines += ["", f"Means over the samples of each test set. The best network (lowest {METRICS[spec.metrics[0]]} "
                  f"error) beats Born by more than two standard errors in {verdicts.count('yes')} of "
                  f"{len(verdicts)} rows" + (f"; it does not in: {'; '.join(lost)}." if lost else ".")]
    lines += [""] + [f"![{what}]({path})" for what, path in figures.items()]
    if spec.notes.strip():
        lines += ["", spec.notes.strip()]
    lines += ["", "Made by", "", "```", tool_command, "```", "", "which ran, in order (a rerun skips the steps "
              "whose outputs are complete):", "", "```", *commands, "```"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- plots
def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


def plot_group(matrix: Matrix, facts: dict, group: str, path: Path) -> bool:
    """Error per method against the noise level or absorption level (lines) or per family (bars), one panel
    per metric; False when the spec has no condition of the group."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = matrix.spec
    conds = [c for c in matrix.conditions if c.group == group]
    if not conds:
        return False
    fig, axes = plt.subplots(1, len(spec.metrics), figsize=(4.6 * len(spec.metrics), 3.6), squeeze=False)
    xs = list(range(len(conds)))
    width = 0.8 / len(spec.methods)
    borns = [m.name for m in spec.methods if m.kind == "born"]
    # the Born baselines in greys and dashes, one shade each; the networks in matplotlib's colours
    greys = {name: str(0.55 * i / max(len(borns) - 1, 1)) for i, name in enumerate(borns)}
    dashes = {name: ("--", ":", "-.")[i % 3] for i, name in enumerate(borns)}
    for ax, metric in zip(axes[0], spec.metrics):
        for i, m in enumerate(spec.methods):
            ys = [100 * facts["errors"][m.name][c.key][metric] for c in conds]
            style = {"color": greys[m.name], "linestyle": dashes[m.name]} if m.kind == "born" else {}
            if group == "ood":
                ax.bar([x + (i - (len(spec.methods) - 1) / 2) * width for x in xs], ys, width, label=m.label,
                       **({"color": greys[m.name]} if m.kind == "born" else {}))
            elif group == "noise":
                ax.plot([c.value for c in conds], ys, marker="o", label=m.label, **style)
            else:
                ax.plot(xs, ys, marker="o", label=m.label, **style)
        if group == "ood":
            ax.set_xticks(xs, [str(c.value) for c in conds], rotation=20)
        elif group == "absorption":
            ax.set_xticks(xs, [_g(c.value) for c in conds])
        ax.set_xlabel({"noise": f"{spec.noise.model or 'fan'} noise level (%)", "absorption": "absorption α",
                       "ood": "test family (noise 0)"}[group])
        ax.set_ylabel(f"mean {METRICS[metric]} error (%)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    # beside the panels: with many methods a legend inside would hide bars
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"{spec.title}: " + {"noise": "in distribution", "absorption": "absorbing scatterers",
                                      "ood": "other test families"}[group], fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------- the section
def replace_section(results: Path, name: str, body: str) -> None:
    """Put `body` between the spec's markers in `results` (appended when absent), atomically; nothing else in
    the file changes."""
    start, end = f"<!-- matrix: {name} -->", f"<!-- /matrix: {name} -->"
    text = results.read_text(encoding="utf-8") if results.exists() else ""
    i, j = text.find(start), text.find(end)
    if text.count(start) > 1 or text.count(end) > 1 or (i < 0) != (j < 0) or (i >= 0 and j < i):
        raise SpecError(f"{results}: expected the markers '{start}' and '{end}' once each, in that order")
    section = f"{start}\n{body}{end}"
    if i < 0:
        new = text + ("" if not text or text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n")
        new += section + "\n"
    else:
        new = text[:i] + section + text[j + len(end):]
    atomic_write_bytes(results, new.encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, help="matrix spec (configs/experiments/NAME.yaml)")
    p.add_argument("--work", default=None, help="folder for data, runs and evaluations (default: the spec's "
                                                "`work`, else runs/matrix-NAME)")
    p.add_argument("--results", default="docs/results.md", help="results file whose section is (re)written")
    p.add_argument("--nproc", type=int, default=2, help="training processes under torchrun (and generation "
                                                        "ranks under mpiexec); 1: plain processes")
    p.add_argument("--dry-run", action="store_true", help="print the commands (and which are done); run nothing")
    args = p.parse_args(argv)
    tool_command = shlex.join(["python", "tools/accuracy_matrix.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        if args.nproc < 1:
            raise SpecError(f"--nproc: expected a number ≥ 1, got {args.nproc}")
        spec = load_spec(args.spec)
        work = Path(args.work or spec.work or f"runs/matrix-{spec.name}")
        matrix = Matrix(spec, work, args.nproc)
        if not args.dry_run:
            work.mkdir(parents=True, exist_ok=True)
        status, commands = run_steps(matrix, args.dry_run)
        if status or args.dry_run:
            return status
        facts = collect(matrix)
        results = Path(args.results)
        figures = {}
        for group in ("noise", "absorption", "ood"):
            path = results.parent / "figures" / f"{spec.name}-{group}.png"
            if plot_group(matrix, facts, group, path):
                figures[f"{spec.title}: {group}"] = str(Path(path).relative_to(results.parent))
        body = markdown(matrix, facts, commands, figures, tool_command)
        atomic_write_json(work / "matrix-results.json", json_safe({"spec": args.spec, **facts}))
        replace_section(results, spec.name, body)
    except SpecError as exc:
        print(f"accuracy_matrix: error: {exc}", file=sys.stderr)
        return 2
    print(f"accuracy_matrix: section '{spec.name}' written to {results}; figures {', '.join(figures.values())}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
