"""An accuracy matrix as a graph of steps (`bcrdist matrix`): the training data (generate → stats → split), the
absorbing and other-family test sets, one training per network and seed, and one evaluation or Born baseline
per method, seed and test condition, each a bcrdist command (`bcrdist.launch.steps.Step`) that names the steps
it needs.

A step is done when its outputs validate (`bcrdist.launch.outputs`), so a rerun runs or submits only what is
missing or failed. WORK/matrix.json (the ledger) records the spec's name and which bcrdist arguments made each
output: an output made by another command, or a work folder of another spec, is refused. WORK/matrix.lock is
held by a launch while it runs (local) or submits (slurm): two launches on one work folder are refused.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from bcrdist.errors import BcrdistError, shown
from bcrdist.fileio import LockBusy, NotFollowedError, atomic_write_json, lock_holder, take_lock
from bcrdist.launch import outputs
from bcrdist.launch.matrix_spec import MethodSpec, Spec
from bcrdist.launch.steps import Step, local_command, run_command, shown as shown_command


class MatrixError(BcrdistError):
    """A bad spec, a work folder in use or of another spec: one line, exit status 2."""


def _g(x: float) -> str:
    return f"{x:g}"


def _needs(*names: str | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for n in names if n is not None))


@dataclasses.dataclass
class Condition:
    """One row: a test set (data, split) at one noise level."""
    key: str
    group: str              # noise | absorption | ood
    label: str
    data: Path
    split: str
    noise: float
    value: float | str


@dataclasses.dataclass
class Run:
    """One network: a method at one seed (seed None: the config's own) trained into `path`, or a given
    checkpoint (`path`: its run folder when it lies in RUN/checkpoints/, else None)."""
    method: MethodSpec
    seed: int | None
    path: Path | None
    checkpoint: Path

    @property
    def key(self) -> str:
        return self.method.name if self.seed is None else f"{self.method.name} seed {self.seed}"

    @property
    def trained(self) -> bool:
        return self.method.checkpoint is None


class Matrix:
    """The steps of one spec, in an order that respects their needs, and where their outputs go."""

    def __init__(self, spec: Spec, work: Path):
        self.spec, self.work = spec, Path(work)
        self.train_data = Path(spec.data.path) if spec.data.path else self.work / "data-train"
        self.steps: list[Step] = []
        self.conditions: list[Condition] = []
        self.runs: list[Run] = []
        self._plan()

    def _add(self, name: str, kind: str, args: list, output: Path, problem, needs: tuple[str, ...] = ()) -> None:
        self.steps.append(Step(name, kind, [str(a) for a in args], output, problem, needs))

    def _generate(self, name: str, config: str, sets: list[str], out: Path) -> None:
        args = ["generate", "--config", config, *(a for s in sets for a in ("--set", s)), "--out", out, "--quiet"]
        self._add(name, "generate", args, out / "manifest.json", lambda: outputs.dataset_problem(out))

    def _plan(self) -> None:
        s, w, data = self.spec, self.work, self.train_data
        gen, stats, split = "generate the training data", "statistics of the training data", \
            "split the training data"
        if s.data.path is None:
            self._generate(gen, s.data.config, s.data.set, data)
            self._add(stats, "stats", ["stats", data], data / "manifest.json",
                      lambda: outputs.statistics_problem(data), (gen,))
            self._add(split, "split", ["split", data, "--percent", _g(s.data.percent), "--val", s.data.val],
                      data / "splits", lambda: outputs.splits_problem(data), (stats,))
        else:
            split = None        # a given data set: its splits exist (checked with the spec)
        model = s.noise.model or "fan"
        sources = {}
        for level in s.noise.levels:
            self.conditions.append(Condition(f"noise{_g(level)}", "noise", f"in distribution, {model} noise "
                                             f"{_g(level)} %", data, "test", level, level))
            sources[f"noise{_g(level)}"] = split
        for level in s.absorption.levels:
            out, name = w / f"data-absorption{_g(level)}", f"generate the absorption-{_g(level)} test set"
            sets = s.data.set + [f"samples={s.absorption.samples}", f"seed={s.absorption.seed}",
                                 f"family.absorption=[{_g(level)}]"]
            self._generate(name, s.data.config, sets, out)
            self.conditions.append(Condition(f"absorption{_g(level)}", "absorption", f"absorption α = {_g(level)}",
                                             out, "all", 0.0, level))
            sources[f"absorption{_g(level)}"] = name
        for family, config in s.ood.families.items():
            out, name = w / f"data-ood-{family}", f"generate the out-of-distribution set {family}"
            self._generate(name, config, s.ood.set, out)
            self.conditions.append(Condition(f"ood-{family}", "ood", f"test family {family}, noise 0", out, "all",
                                             0.0, family))
            sources[f"ood-{family}"] = name
        for m in s.methods:
            if m.kind != "network":
                continue
            if m.checkpoint is not None:
                checkpoint = Path(m.checkpoint)
                home = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
                self.runs.append(Run(m, None, home, checkpoint))
                continue
            for seed in m.seeds or [None]:
                path = w / "runs" / (m.name if seed is None else f"{m.name}-seed{seed}")
                run = Run(m, seed, path, path / "checkpoints" / "best.pt")
                self.runs.append(run)
                args = ["train", "--config", m.config, "--set", f"data.path={data}", "--set", f"run_dir={run.path}",
                        *(a for o in m.set for a in ("--set", o)),
                        *(("--set", f"seed={seed}") if seed is not None else ()), "--resume", "auto"]
                self._add(f"train {run.key}", "train", args, run.path / "results.json",
                          lambda path=run.path: outputs.training_problem(path), _needs(split))
        for c in self.conditions:
            noise = ["--noise", _g(c.noise)] + (["--noise-model", s.noise.model]
                                                if s.noise.model and c.group == "noise" else [])
            for m in s.methods:
                for run in self.runs_of(m):
                    out = self.output(m, c, run)
                    check = (lambda path=out, c=c, run=run: outputs.scores_problem(
                        path, data=c.data, split=c.split, noise=c.noise, metrics=s.metrics,
                        checkpoint=None if run is None else run.checkpoint))
                    if run is None:
                        args = ["baseline", "--data", c.data, "--split", c.split, "--val-data", data, "--val-split",
                                "val", *noise, *m.args, "--out", out]
                        self._add(f"baseline {m.name} on {c.key}", "baseline", args, out, check,
                                  _needs(split, sources[c.key]))
                    else:
                        args = ["evaluate", "--checkpoint", run.checkpoint, "--data", c.data,
                                "--split", c.split, *noise, "--plots", s.plots, *m.args, "--out", out.parent]
                        self._add(f"evaluate {run.key} on {c.key}", "evaluate", args, out, check,
                                  _needs(f"train {run.key}" if run.trained else None, sources[c.key]))

    def runs_of(self, method: MethodSpec) -> list[Run | None]:
        """A network's runs (one per seed); [None] for Born."""
        return [r for r in self.runs if r.method is method] if method.kind == "network" else [None]

    def output(self, method: MethodSpec, c: Condition, run: Run | None = None) -> Path:
        base = self.work / "eval" / (method.name if run is None or run.seed is None else
                                     f"{method.name}-seed{run.seed}")
        return base / f"{c.key}.json" if method.kind == "born" else base / c.key / "metrics.json"

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


class Ledger:
    """WORK/matrix.json: the spec's name and, per step, the bcrdist arguments that made its output; rewritten
    atomically (never through a planted link) after each step."""

    def __init__(self, work: Path, spec_name: str):
        self.path, self.spec_name = work / "matrix.json", spec_name
        doc, problem = outputs.read_json(self.path)
        if problem and self.path.exists():
            raise MatrixError(f"{problem}; it is the ledger of this work folder")
        doc = doc or {}
        if doc.get("spec", spec_name) != spec_name:
            raise MatrixError(f"{work}: holds the results of spec {shown(doc.get('spec'))}, not {spec_name!r}; use "
                              f"another --work")
        self.made = dict(doc.get("made") or {})

    def check(self, step: Step) -> None:
        recorded = self.made.get(step.name)
        if recorded is not None and recorded != step.args:
            raise MatrixError(f"{step.name}: {step.output} was made by another command "
                              f"({shown_command(['bcrdist', *recorded])}); delete it or use another --work")

    def record(self, step: Step) -> None:
        self.made[step.name] = step.args
        atomic_write_json(self.path, {"spec": self.spec_name, "made": self.made})


class WorkLock:
    """WORK/matrix.lock, held (fcntl) by one launch at a time; released when the process ends in any way."""

    def __init__(self, work: Path):
        self.path, self.fd = work / "matrix.lock", None

    def acquire(self) -> None:
        try:
            self.fd = take_lock(self.path)
        except NotFollowedError as exc:
            raise MatrixError(str(exc)) from None
        except LockBusy as busy:
            raise MatrixError(f"{self.path}: another launch is using this work folder "
                              f"({busy.holder or 'holder unknown'}); wait for it to end") from None

    def holder(self) -> str | None:
        """Who holds the lock now (its pid, host and start), or None when no launch does; writes nothing."""
        return lock_holder(self.path)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def pending(matrix: Matrix, ledger: Ledger) -> tuple[list[Step], list[Step]]:
    """(steps done, steps to run), checking that every done output was made by this spec's command."""
    done, todo = [], []
    for step in matrix.steps:
        if step.problem() is None:
            ledger.check(step)
            done.append(step)
        else:
            todo.append(step)
    return done, todo


def run_local(matrix: Matrix, nproc: int, dry_run: bool = False) -> tuple[int, list[str]]:
    """Run every step not yet done, here, in order. A failed step stops only the steps that need it (directly or
    not); each failure is one line at the end. Returns (status, the commands of the matrix, run now or before)."""
    ledger = Ledger(matrix.work, matrix.spec.name)
    failed: dict[str, str] = {}
    blocked: set[str] = set()
    commands = []
    for step in matrix.steps:
        command = local_command(step, nproc)
        commands.append(shown_command(command))
        if step.problem() is None:
            ledger.check(step)
            if not dry_run and step.name not in ledger.made:
                ledger.record(step)
            print(f"# done, skipped: {shown_command(command)}", flush=True)
            continue
        if any(need in failed or need in blocked for need in step.needs):
            blocked.add(step.name)
            continue
        print(f"$ {shown_command(command)}", flush=True)
        if dry_run:
            continue
        status = run_command(command)
        problem = step.problem()
        if status != 0 or problem is not None:
            failed[step.name] = (f"exit status {status}" if status != 0 else f"exit status 0 but {problem}") + \
                f"): {shown_command(command)}"
            continue
        ledger.record(step)
    for name, why in failed.items():
        print(f"bcrdist matrix: step '{name}' failed ({why}", file=sys.stderr)
    if blocked:
        print(f"bcrdist matrix: {len(blocked)} step(s) not run: they need a failed step", file=sys.stderr)
    return (1 if failed else 0), commands
