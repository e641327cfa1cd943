"""`bcrdist matrix --launcher slurm`: every step of an accuracy matrix (`bcrdist.launch.matrix.Matrix`) not yet
done as one submitit job, started by Slurm after the jobs of the steps it needs (`afterok`), so independent
steps run at the same time; `bcrdist matrix status` (each step's state); `--dry-run` (the job graph and each
step's estimated cost).

How a step runs in its job:
- training: `bcrdist.launch.submit.TrainJob`, exactly as `bcrdist submit` runs it — the training config
  resolved here from the step's `--config`/`--set` arguments, one srun task per rank on every node
  (multi-node DDP), Checkpointable: on SIGUSR2 (time limit, preemption) rank 0 saves `last.pt` and submitit
  requeues the same job, which resumes. The CLI in a child process would not do: submitit's signal handler
  would requeue the job while the child, which holds the training state, never saves it.
- generation with several tasks: one srun task per MPI rank (`srun --mpi=pmi2`, or `$BCRDIST_SRUN_MPI`, as
  slurm/generate.sbatch does), each running `python -m bcrdist generate ...` with the task's PMI descriptor
  passed on; the shards a rank writes depend only on the shard's index, so the data set is byte-identical
  for any number of ranks.
- every other step: one task running `python -m bcrdist ARGS` (a child process: the job's exit status and
  log are the command's own).

WORK/matrix-jobs.json records, per step, its last job (id, log file, the arguments it ran), rewritten
atomically and never through a symbolic link. A step's state: done when its outputs validate; else pending or
running while its job may still run; blocked when its job cannot run (it waits on a failed step:
Slurm's DependencyNeverSatisfied, cancelled as soon as a launch or `status` sees it, so the next launch
submits it again) or ended without outputs because a step it needs is not done; failed when its job ended
without valid outputs; missing when no job was submitted for it. States come from `squeue`/`scontrol`
(`bcrdist.launch.jobs`), which work without Slurm's accounting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from submitit.core.utils import FailedJobError

from bcrdist.config import load_config, to_dict
from bcrdist.errors import shown
from bcrdist.fileio import atomic_write_json
from bcrdist.launch.jobs import RecordedJob, job_states
from bcrdist.launch.matrix import Ledger, Matrix, MatrixError, WorkLock, pending
from bcrdist.launch.matrix_report import write_results
from bcrdist.launch.matrix_spec import step_resources
from bcrdist.launch.steps import Step, shown as shown_command
from bcrdist.models.registry import network_class
from bcrdist.launch.submit import JobResources, SubmitError, TrainJob, batch_script, check_configs, make_executor
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.train.config import TrainConfig

JOBS_FILE = "matrix-jobs.json"
# the kinds whose command uses every task of its job; the others run as one process
MULTI_TASK = ("train", "generate")
# Slurm states of a job that is on a node (the others of a live job wait)
ON_NODE = ("RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SUSPENDED")


class StepJob:
    """One bcrdist command in a job task: `python -m bcrdist ARGS` as a child process with the task's
    environment and descriptors (an MPI rank's PMI descriptor among them); a non-zero exit fails the job."""

    def __call__(self, args: list[str]) -> int:
        status = subprocess.run([sys.executable, "-m", "bcrdist", *args], close_fds=False).returncode
        if status != 0:
            raise RuntimeError(f"bcrdist {args[0]} exited with status {status}")
        return status


@dataclasses.dataclass
class StepState:
    state: str                  # done | pending | running | failed | missing | blocked
    job_id: str | None = None
    log: str | None = None
    detail: str = ""            # Slurm's state of the job, when it says more than `state`


# ---------------------------------------------------------------------------------------------- job record


class JobRecord:
    """WORK/matrix-jobs.json: per step, the last job submitted for it."""

    def __init__(self, work: Path, spec_name: str):
        self.path, self.spec_name = work / JOBS_FILE, spec_name
        doc = self._read()
        if doc.get("spec", spec_name) != spec_name:
            raise MatrixError(f"{self.path}: records the jobs of spec {shown(doc.get('spec'))}, not {spec_name!r}; "
                              f"use another --work")
        self.steps: dict[str, dict] = dict(doc.get("steps") or {})

    def _read(self) -> dict:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            why = "a symbolic link, not followed" if exc.errno == errno.ELOOP else exc.strerror
            raise MatrixError(f"{self.path}: cannot read ({why})") from None
        with open(fd, "rb") as fh:
            try:
                doc = json.loads(fh.read())
            except (ValueError, RecursionError):
                doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("steps", {}), dict):
            raise MatrixError(f"{self.path}: not a record of matrix jobs; delete it (the jobs it lists are not "
                              f"cancelled)")
        return doc

    def add(self, step: Step, job_id: str, log: str) -> None:
        self.steps[step.name] = {"job_id": job_id, "log": log, "args": step.args,
                                 "submitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        atomic_write_json(self.path, {"spec": self.spec_name, "steps": self.steps})


# ------------------------------------------------------------------------------------------------- states


def check_graph(matrix: Matrix) -> None:
    """Every step's needs name steps of the matrix, and no step needs itself through others (one line)."""
    names = {s.name for s in matrix.steps}
    for s in matrix.steps:
        unknown = [n for n in s.needs if n not in names]
        if unknown:
            raise MatrixError(f"step {s.name!r} needs {unknown[0]!r}, which is not a step of the matrix")
    needs = {s.name: set(s.needs) for s in matrix.steps}
    while needs:
        ready = [n for n, waits in needs.items() if not waits]
        if not ready:
            raise MatrixError(f"steps {', '.join(repr(n) for n in sorted(needs))} depend on each other in a cycle")
        for n in ready:
            del needs[n]
        for waits in needs.values():
            waits.difference_update(ready)


def _pending_reasons(job_ids: list[str]) -> dict[str, str]:
    """Why each pending job waits (squeue's %r), by job id; {} where squeue fails."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i|%r", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)


def _cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)


def step_states(matrix: Matrix, record: JobRecord) -> dict[str, StepState]:
    """Each step's state (see the module docstring). Jobs that can never start (DependencyNeverSatisfied) are
    cancelled here."""
    known = {name: e for name, e in record.steps.items() if isinstance(e, dict) and isinstance(e.get("job_id"), str)}
    recorded = [RecordedJob(e["job_id"], None, str(matrix.work), e.get("submitted", ""), "slurm",
                            str(matrix.work / "slurm")) for e in known.values()]
    slurm = job_states(recorded) if recorded else {}
    reasons = _pending_reasons([j for j, s in slurm.items() if s.live and s.text.split()[0] not in ON_NODE])
    never = [j for j, why in reasons.items() if "DependencyNeverSatisfied" in why]
    _cancel(never)
    states: dict[str, StepState] = {}
    for step in matrix.steps:           # needs before the steps that need them
        entry = known.get(step.name)
        job_id, log = (entry["job_id"], entry.get("log")) if entry else (None, None)
        job = slurm.get(job_id) if job_id else None
        if step.problem() is None:
            states[step.name] = StepState("done", job_id, log)
        elif job_id is None:
            states[step.name] = StepState("missing")
        elif job_id in never:
            states[step.name] = StepState("blocked", job_id, log, "it waited on a failed step; cancelled")
        elif job is not None and job.live:
            word = job.text.split()[0]
            states[step.name] = StepState("running" if word in ON_NODE else "pending", job_id, log,
                                          "" if word in ("RUNNING", "PENDING") else word)
        elif any(states[n].state != "done" for n in step.needs):
            states[step.name] = StepState("blocked", job_id, log, "a step it needs is not done")
        else:
            states[step.name] = StepState("failed", job_id, log, job.text if job else "")
    return states


def print_status(matrix: Matrix) -> int:
    """`bcrdist matrix status`: one line per step — its name, state, job id and log file."""
    check_graph(matrix)
    Ledger(matrix.work, matrix.spec.name)           # refuses a work folder of another spec
    states = step_states(matrix, JobRecord(matrix.work, matrix.spec.name))
    holder = WorkLock(matrix.work).holder()
    if holder:
        print(f"# a launch is running in {matrix.work} ({holder}): a step it is running shows as missing until "
              f"its outputs validate", flush=True)
    width = max(len(s.name) for s in matrix.steps)
    for step in matrix.steps:
        st = states[step.name]
        job = f"  job {st.job_id}" if st.job_id else ""
        log = f"  log {st.log}" if st.log else ""
        detail = f"  ({st.detail})" if st.detail else ""
        print(f"{step.name:<{width}}  {st.state:<8}{job}{log}{detail}".rstrip(), flush=True)
    counts = {}
    for st in states.values():
        counts[st.state] = counts.get(st.state, 0) + 1
    print(f"# {len(matrix.steps)} steps: " + ", ".join(f"{n} {s}" for s, n in counts.items()), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------- submit


def _options(args: list[str], allowed: tuple[str, ...]) -> dict[str, list[str]]:
    """`--opt value` pairs of a step's arguments, by option; one line when the step has another form."""
    found: dict[str, list[str]] = {}
    pairs = args[1:]
    for i in range(0, len(pairs), 2):
        if pairs[i] not in allowed or i + 1 >= len(pairs):
            raise MatrixError(f"step arguments {shown_command(['bcrdist', *args])}: expected only "
                              f"{', '.join(allowed)} with a value each")
        found.setdefault(pairs[i], []).append(pairs[i + 1])
    return found


def training_config(step: Step) -> dict:
    """The resolved training config of a `train --config C --set k=v ... --resume auto` step."""
    opts = _options(step.args, ("--config", "--set", "--resume"))
    if opts.get("--resume", ["auto"]) != ["auto"]:
        raise MatrixError(f"step {step.name!r}: a matrix training resumes with --resume auto")
    cfg = load_config((opts.get("--config") or [None])[0], TrainConfig, opts.get("--set", []))
    cfg.checkpoint.resume = "auto"
    return to_dict(cfg)


def _tasks(res: JobResources) -> int:
    return res.nodes * res.ranks_per_node


def resources(matrix: Matrix, site: str | None) -> dict[str, JobResources]:
    """The resources of every step kind of the matrix; a kind whose command runs as one process must ask for
    one task."""
    found = {}
    for kind in dict.fromkeys(s.kind for s in matrix.steps):
        res = step_resources(matrix.spec, kind, site)
        if kind not in MULTI_TASK and _tasks(res) != 1:
            raise MatrixError(f"resources.{kind}: `bcrdist {kind}` runs as one process: expected nodes 1 and "
                              f"tasks_per_node 1, got {res.nodes} × {res.ranks_per_node} tasks")
        found[kind] = res
    return found


def _executor(kind: str, res: JobResources, folder: Path, dependency: list[str] = ()):
    executor = make_executor(res, folder)
    params = {"name": f"bcrdist-matrix-{kind}"}
    if kind == "generate" and _tasks(res) > 1:
        params["slurm_srun_args"] = [f"--mpi={os.environ.get('BCRDIST_SRUN_MPI') or 'pmi2'}"]
    if dependency:
        params["slurm_dependency"] = "afterok:" + ":".join(dependency)
    executor.update_parameters(**params)
    return executor


def check_batch_scripts(kinds: dict[str, JobResources], folder: Path) -> None:
    """Ask sbatch (--test-only: nothing is queued) whether it accepts each kind's batch script; the first
    refusal is one line with sbatch's own message."""
    for kind, res in kinds.items():
        script = batch_script(_executor(kind, res, folder))
        try:
            out = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True,
                                 timeout=60)
        except subprocess.TimeoutExpired:
            raise SubmitError("sbatch --test-only did not answer in 60 s: is slurmctld up?") from None
        if out.returncode != 0:
            lines = [ln.strip() for ln in out.stderr.splitlines() if ln.strip()]
            raise SubmitError(f"resources.{kind}: sbatch refused the job: {'; '.join(lines) or 'no message'}")


def _submit(step: Step, res: JobResources, folder: Path, dependency: list[str]):
    """Submit `step` as one job; sbatch's refusal is one line (`SubmitError`)."""
    executor = _executor(step.kind, res, folder, dependency)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            if step.kind == "train":
                config = training_config(step)
                check_configs([config], res)
                return executor.submit(TrainJob(), config)
            return executor.submit(StepJob(), step.args)
    except FailedJobError as exc:
        lines = [ln.strip() for ln in (str(exc) or captured.getvalue()).splitlines() if ln.strip()]
        raise SubmitError(f"step {step.name!r}: sbatch refused the job: {'; '.join(lines) or 'no message'}") \
            from None


def launch_slurm(matrix: Matrix, site: str | None, dry_run: bool, results: Path, command: str,
                 spec_path: str | None = None) -> int:
    """Submit every step not done and not queued; write the section once every step is done. 0: done or
    submitted; 1: a step's job failed (one line each; it is submitted again, the independent steps go on)."""
    check_graph(matrix)
    kinds = resources(matrix, site)
    if dry_run:
        return print_plan(matrix, kinds)
    matrix.work.mkdir(parents=True, exist_ok=True)
    lock = WorkLock(matrix.work)
    lock.acquire()
    try:
        ledger = Ledger(matrix.work, matrix.spec.name)
        record = JobRecord(matrix.work, matrix.spec.name)
        done, _ = pending(matrix, ledger)
        for step in done:
            if step.name not in ledger.made:
                ledger.record(step)
        states = step_states(matrix, record)
        if len(done) == len(matrix.steps):
            commands = [shown_command(["bcrdist", *s.args]) for s in matrix.steps]
            written = write_results(matrix, results, commands, command, spec_path=spec_path or matrix.spec.name)
            print(f"bcrdist matrix: every step done; section '{matrix.spec.name}' written to {results}; figures "
                  f"{', '.join(written)}", file=sys.stderr)
            return 0
        failed = [s for s in matrix.steps if states[s.name].state == "failed"]
        for s in failed:
            st = states[s.name]
            print(f"bcrdist matrix: step '{s.name}' failed: job {st.job_id} ({st.detail or 'ended'}) left no "
                  f"valid output (log {st.log}); submitting it again", file=sys.stderr)
        folder = (matrix.work / "slurm").absolute()
        resubmit = {s.name for s in matrix.steps if states[s.name].state in ("missing", "failed", "blocked")}
        for step in matrix.steps:
            # a job still waiting on the old job of a step submitted again would wait for ever: replace it
            if states[step.name].state == "pending" and resubmit.intersection(step.needs):
                _cancel([states[step.name].job_id])
                resubmit.add(step.name)
        check_batch_scripts({k: kinds[k] for k in dict.fromkeys(s.kind for s in matrix.steps if s.name in resubmit)},
                            folder)
        jobs = {s.name: states[s.name].job_id for s in matrix.steps if states[s.name].state in ("pending", "running")}
        for step in matrix.steps:
            if step.name not in resubmit:
                continue
            dependency = [jobs[n] for n in step.needs if states[n].state != "done"]
            job = _submit(step, kinds[step.kind], folder, dependency)
            jobs[step.name] = str(job.job_id)
            record.add(step, str(job.job_id), str(job.paths.stderr))
            waits = f", after {', '.join(dependency)}" if dependency else ""
            print(f"submitted  {step.name}: job {job.job_id}{waits} (log {record.steps[step.name]['log']})",
                  flush=True)
    finally:
        lock.release()
    queued = len(jobs) - len(resubmit)
    print(f"bcrdist matrix: {len(done)} step(s) done, {queued} already queued or running, {len(resubmit)} "
          f"submitted; `bcrdist matrix status` follows them; rerun this command when they have ended",
          file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------- dry run: costs

# measured figures (issue 20, docs/benchmarks.md) the estimates are scaled from
GEN_CPU_S, GEN_N, GEN_NA = 0.46, 100, 100          # CPU-s per sample at n = 100, Na = 100 (issue 20)
TRAIN_CORE_S, TRAIN_ALPHA, TRAIN_NA = 0.069, 128, 100   # core-s per sample per epoch, BCR-Net α = 128, 100 × 100
# GFLOP per sample of that BCR-Net's train step (tools/bench_model.py --network bcrnet, docs/benchmarks.md): a
# network declaring its own `train_gflop` is costed at the same rate per FLOP
TRAIN_GFLOP = 1.473
BORN_CORE_S, BORN_NA, BORN_IMAGE = 33 / 16, 100, 100    # Born baseline: 33 s for 16 test samples (issue 20)
RULES = (
    "generate: 0.46 CPU-s/sample at n = 100, Na = 100 (measured, issue 20), scaled ∝ Na·n²·log n",
    "train: 69 core-ms per sample and epoch, BCR-Net α = 128 on a 100 × 100 far field (measured, issue 20), "
    "scaled ∝ α·Na² (it also gives docs/benchmarks.md's α = 16, 64 × 32: 1.8 ms predicted, 1.9 measured); the "
    "most epochs the stages allow (patience may end them sooner); a network that declares its GFLOP per sample at "
    "100 × 100 (`train_gflop`, counted by tools/bench_model.py --network) at BCR-Net's rate per FLOP, ∝ Na², its "
    "default sizes assumed; one that does not: BCR-Net's rule",
    "evaluate: one forward pass per test sample, a third of a training step",
    "baseline: 33 s for 16 test samples at Na = 100, image 100 × 100 (measured, issue 20), ∝ Na²·image²",
    "stats, split: read the data once: negligible",
    "reserved: nodes × tasks × cpus_per_task (GPUs) × the time limit — what the job holds at most",
)


def _gen_config(step: Step) -> GenerationConfig:
    opts = _options(step.args[:-1] if step.args[-1] == "--quiet" else step.args, ("--config", "--set", "--out"))
    return load_config(opts["--config"][0], GenerationConfig, opts.get("--set", []))


def _stage_epochs(stages: list | None, default: int, epochs: int) -> int:
    """The most epochs of one phase: its first stage 2E, every later one E."""
    count = default if stages is None else len(stages)
    return 0 if count == 0 else epochs * (count + 1)


def estimates(matrix: Matrix) -> dict[str, float]:
    """Estimated core-hours of every step (the rules in RULES)."""
    spec = matrix.spec
    gens = {str(Path(s.args[s.args.index("--out") + 1])): _gen_config(s) for s in matrix.steps
            if s.kind == "generate"}
    train_cfg = gens[str(matrix.train_data)]
    n_orig = int(train_cfg.samples * spec.data.percent)
    test_count = min(max(n_orig, 5000), train_cfg.samples - n_orig)
    n_train = n_orig - spec.data.val
    train_per_sample = {}
    cost = {}
    for s in matrix.steps:
        if s.kind == "generate":
            g = gens[s.args[s.args.index("--out") + 1]]
            rule = g.Na * g.n ** 2 * math.log(g.n) / (GEN_NA * GEN_N ** 2 * math.log(GEN_N))
            cost[s.name] = g.samples * GEN_CPU_S * rule / 3600
        elif s.kind == "train":
            cfg = load_config(*_train_args(s))
            sch = cfg.schedule
            epochs = (_stage_epochs(sch.pretrain_stages, 9, sch.epochs) if sch.pretrain else 0) + \
                (_stage_epochs(sch.finetune_stages, 4, sch.epochs) if sch.finetune else 0)
            size = train_cfg.Na ** 2 / TRAIN_NA ** 2
            gflop = network_class(cfg.model.type).train_gflop
            if gflop is not None:
                per = TRAIN_CORE_S * gflop / TRAIN_GFLOP * size
            else:
                per = TRAIN_CORE_S * cfg.model.alpha / TRAIN_ALPHA * size
            train_per_sample[s.name] = per
            cost[s.name] = per * n_train * epochs / 3600
        elif s.kind in ("evaluate", "baseline"):
            data = s.args[s.args.index("--data") + 1]
            count = test_count if Path(data) == matrix.train_data else gens[data].samples
            if s.kind == "evaluate":
                train = next(n for n in s.needs if n.startswith("train "))
                cost[s.name] = count * train_per_sample[train] / 3 / 3600
            else:
                image = train_cfg.image_size or train_cfg.n
                cost[s.name] = count * BORN_CORE_S * (train_cfg.Na * image) ** 2 / (BORN_NA * BORN_IMAGE) ** 2 \
                    / 3600
        else:
            cost[s.name] = 0.0
    return cost


def _train_args(step: Step) -> tuple:
    opts = _options(step.args, ("--config", "--set", "--resume"))
    return (opts.get("--config") or [None])[0], TrainConfig, opts.get("--set", [])


def _reserved(res: JobResources) -> str:
    cores = _tasks(res) * res.cpus_per_task
    text = f"{cores * res.time / 60:.2f} core-h"
    if res.gpus_per_node:
        text += f", {res.nodes * res.gpus_per_node * res.time / 60:.2f} GPU-h"
    return text


def _describe(res: JobResources) -> str:
    parts = [f"{res.nodes} node{'s' if res.nodes > 1 else ''} × {res.ranks_per_node} task"
             f"{'s' if res.ranks_per_node > 1 else ''} × {res.cpus_per_task} cpu"]
    if res.gpus_per_node:
        parts.append(f"{res.gpus_per_node} GPU/node")
    parts.append(f"{res.time} min")
    parts += [f"{k} {getattr(res, k)}" for k in ("partition", "account", "qos") if getattr(res, k)]
    return ", ".join(parts)


def print_plan(matrix: Matrix, kinds: dict[str, JobResources]) -> int:
    """The job graph of --dry-run: each step (done or to submit), its resources, the steps it waits for, its
    estimated cost; then the rules of the estimates. Submits and writes nothing."""
    cost = estimates(matrix)
    total = 0.0
    print(f"# job graph of '{matrix.spec.name}' (--dry-run: nothing submitted, nothing written)")
    for i, step in enumerate(matrix.steps, 1):
        res = kinds[step.kind]
        done = step.problem() is None
        if not done:
            total += cost[step.name]
        print(f"[{i}] {step.name}{'  (done, skipped)' if done else ''}")
        print(f"    $ {shown_command(['bcrdist', *step.args])}")
        print(f"    resources: {_describe(res)}; reserved ≤ {_reserved(res)}")
        waits = ", ".join(f"[{[s.name for s in matrix.steps].index(n) + 1}]" for n in step.needs)
        print(f"    waits for: {waits or 'nothing'} (afterok)")
        print(f"    estimated cost: {cost[step.name]:.3g} core-h")
    print(f"# estimated total of the steps to run: {total:.3g} core-h. The estimates scale measured figures:")
    for rule in RULES:
        print(f"#   {rule}")
    return 0
