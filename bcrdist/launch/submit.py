"""`bcrdist submit`: training jobs (and sweeps as job arrays) through submitit.

    bcrdist submit --config CFG.yaml --nodes 2 --gpus-per-node 4 --partition gpu --time 240 \\
        [--account A --qos Q --constraint C --mem 64G --exclusive --sbatch KEY=VALUE --setup LINE] \\
        [--slurm-config SITE.yaml] [--sweep data.noise=0,5,10] [--set key=value ...] [--local] [--wait]

What a job asks Slurm for is a `JobResources`, read from a YAML file of the same keys (`--slurm-config`, or
`$BCRDIST_SLURM_CONFIG`) and overridden by the options; every value that ends up in the batch script is
validated first (no newlines or other control characters, Slurm's syntax for names and memory). A batch
script that sbatch refuses is one line with sbatch's own message (`SubmitError`).

The job callable is Checkpointable: on a time limit or preemption (SIGUSR2, `--signal-delay` seconds
ahead) the training loop saves `last.pt` at its next step boundary, then rank 0 hands over to submitit,
which requeues the job; the requeued job resumes from `last.pt`. Ranks come from
`submitit.helpers.TorchDistributedEnvironment`. A sweep is a job array, one element per combination of
the `--sweep` values, each in its own run directory `RUN_DIR/key=value,...`. `--local` runs on this
machine with submitit's LocalExecutor (one node; the Slurm-only settings do not apply).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit
import yaml
from submitit.core.utils import FailedJobError

from bcrdist.config import from_dict, load_config, parse_yaml, to_dict
from bcrdist.errors import BcrdistError, ConfigError, shown
from bcrdist.train.config import TrainConfig

SLURM_CONFIG_VAR = "BCRDIST_SLURM_CONFIG"


class SubmitError(BcrdistError):
    """sbatch refused the job (its message), or there is no sbatch here."""


class TrainJob(submitit.helpers.Checkpointable):
    """One training run as a submitit job; `checkpoint()` (inherited) resubmits it unchanged, and the
    resubmitted run continues from RUN/checkpoints/last.pt."""

    def __call__(self, config: dict) -> dict:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        os.environ["BCRDIST_DIST_METHOD"] = "torchrun"
        cfg = from_dict(TrainConfig, config)
        cfg.checkpoint.resume = "auto"
        from bcrdist.train.trainer import train

        return train(cfg)


def sweep_points(specs: list[str]) -> list[dict[str, object]]:
    """['a=1,2', 'b=x'] → [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}] (values parsed as YAML)."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--sweep {shown(spec)}: expected key=v1,v2,...")
        try:
            axes.append([(key.strip(), parse_yaml(v)) for v in values.split(",")])
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            raise ConfigError(f"--sweep {shown(spec)}: a value is not valid YAML ({' '.join(str(exc).split())})") \
                from None
    return [dict(point) for point in itertools.product(*axes)] if axes else [{}]


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")      # C0 controls but tab, and DEL
_MEM = re.compile(r"\d+[KMGT]?", re.I)
_SBATCH_KEY = re.compile(r"[a-z][a-z0-9-]*")
# set by bcrdist or submitit (changing them breaks logs, arrays or requeue), or by a dedicated option
_MANAGED = {"output": None, "error": None, "open-mode": None, "array": None, "signal": "signal_delay",
            "job-name": None, "wckey": None, "nodes": "nodes", "ntasks-per-node": "tasks_per_node",
            "cpus-per-task": "cpus_per_task", "gpus-per-node": "gpus_per_node", "gpus-per-task": "gpus_per_task",
            "time": "time", "partition": "partition", "account": "account", "qos": "qos",
            "constraint": "constraint", "mem": "mem", "exclusive": "exclusive"}


def check_script_text(where: str, value: str) -> str:
    """`value` may go into a batch script: refuse newlines and other control characters (which would end an
    `#SBATCH` line or a shell command early and start another)."""
    bad = _CONTROL.search(value)
    if bad:
        raise ConfigError(f"{where}: {shown(value)} contains the control character {bad.group()!r}; it would "
                          "break the batch script")
    return value


def _one_word(where: str, value: str | None) -> None:
    if value is None:
        return
    check_script_text(where, value)
    if not value or any(ch.isspace() for ch in value):
        raise ConfigError(f"{where}: expected one word (a Slurm name), got {shown(value)}")


@dataclass(frozen=True)
class JobResources:
    """What one training job asks Slurm for; the keys of `--slurm-config` (the options' names with `_`)."""

    nodes: int = 1
    tasks_per_node: int | None = None        # ranks per node; default gpus_per_node, or 1
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    gpus_per_task: int = 0                   # Slurm binds each task to its own GPUs (seen from cuda:0)
    time: int = 60                           # minutes
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None            # node features, e.g. "a100&ib"
    mem: str | int | None = None             # per node, Slurm's syntax: 64G, 500M, 0 (all of it)
    exclusive: bool = False
    sbatch: dict[str, str | int | bool] = field(default_factory=dict)   # more sbatch options: {mail-type: END}
    setup: list[str] = field(default_factory=list)   # shell lines run before srun: ["module load cuda/12.4"]
    signal_delay: int = 120                  # seconds of warning (SIGUSR2) before the time limit
    max_timeouts: int = 3                    # requeues after time limits (preemptions are unlimited)

    def validate(self) -> None:
        for key in ("nodes", "cpus_per_task", "time", "signal_delay"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be ≥ 1, got {getattr(self, key)}")
        for key in ("gpus_per_node", "gpus_per_task", "max_timeouts"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be ≥ 0, got {getattr(self, key)}")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise ConfigError(f"tasks_per_node: must be ≥ 1, got {self.tasks_per_node}")
        for key in ("partition", "account", "qos", "constraint"):
            _one_word(key, getattr(self, key))
        if self.mem is not None and not _MEM.fullmatch(str(self.mem)):
            raise ConfigError(f"mem: expected a size such as 64G, 500M or 0 (all of the node's), got {shown(self.mem)}")
        for key, value in self.sbatch.items():
            if not isinstance(key, str) or not _SBATCH_KEY.fullmatch(key):
                raise ConfigError(f"sbatch: {shown(key)} is not an sbatch option name (lower case, e.g. mail-type)")
            if key in _MANAGED:
                instead = f"use {_MANAGED[key]} (--{_MANAGED[key].replace('_', '-')})" if _MANAGED[key] else \
                    "bcrdist sets it"
                raise ConfigError(f"sbatch.{key}: {instead}")
            if isinstance(value, bool) and not value:
                raise ConfigError(f"sbatch.{key}: false is not an sbatch value (leave the option out)")
            if not isinstance(value, (str, int)):
                raise ConfigError(f"sbatch.{key}: expected a string, a number or true, got {shown(value)}")
            if isinstance(value, str):
                check_script_text(f"sbatch.{key}", value)
        for i, line in enumerate(self.setup):
            check_script_text(f"setup[{i}]", line)

    @property
    def ranks_per_node(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)


def load_resources(path: str | Path | None = None, **options) -> JobResources:
    """The job's resources: the YAML file `path` (default `$BCRDIST_SLURM_CONFIG`, if set), then `options`
    (those that are not None) on top; `setup` lines are appended and `sbatch` options merged. A missing file
    is one line naming it and where it was given."""
    source = "--slurm-config" if path else f"${SLURM_CONFIG_VAR}"
    path = path or os.environ.get(SLURM_CONFIG_VAR) or None
    if path and not Path(path).is_file():
        raise ConfigError(f"{path}: Slurm site config not found (given by {source})")
    base = load_config(path, JobResources, packaged=False) if path else JobResources()
    given = {k: v for k, v in options.items() if v is not None}
    if "setup" in given:
        given["setup"] = list(base.setup) + list(given["setup"])
    if "sbatch" in given:
        given["sbatch"] = {**base.sbatch, **given["sbatch"]}
    # the file alone was valid (load_config names it in its errors): what fails now comes from the options
    return from_dict(JobResources, {**to_dict(base), **given})


def make_executor(res: JobResources, folder: Path, local: bool = False):
    """A submitit executor for `res`, logging into `folder` (`local`: submitit's LocalExecutor here)."""
    check_script_text("--folder", str(folder))
    if local:
        if res.nodes != 1:
            raise ConfigError("--local runs on this machine: it needs --nodes 1")
        executor = submitit.AutoExecutor(folder=folder, cluster="local")
    else:
        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise SubmitError("sbatch not found: submit from a machine with the Slurm client, or run here with "
                              "--local")
        # max_num_timeout is a constructor argument of the Slurm executor, not an update_parameters one
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=res.max_timeouts)
    params = dict(nodes=res.nodes, tasks_per_node=res.ranks_per_node, cpus_per_task=res.cpus_per_task,
                  timeout_min=res.time, name="bcrdist-train")
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if not local:
        params.update(slurm_signal_delay_s=res.signal_delay)
        optional = {"slurm_partition": res.partition, "slurm_account": res.account, "slurm_qos": res.qos,
                    "slurm_constraint": res.constraint, "slurm_mem": None if res.mem is None else str(res.mem),
                    "slurm_gpus_per_task": res.gpus_per_task or None, "slurm_exclusive": res.exclusive or None,
                    "slurm_additional_parameters": dict(res.sbatch) or None, "slurm_setup": list(res.setup) or None}
        params.update({k: v for k, v in optional.items() if v is not None})
    executor.update_parameters(**params)
    return executor


def batch_script(executor, array_size: int = 1) -> str:
    """The batch script submitit would hand to sbatch for this executor (a job array of `array_size`
    elements when > 1), without submitting anything."""
    slurm = executor._executor      # the SlurmExecutor behind the AutoExecutor
    params = dict(slurm.parameters)
    if array_size > 1:
        params["map_count"] = array_size
    return submitit.slurm.slurm._make_sbatch_string(command=slurm._submitit_command_str, folder=slurm.folder,
                                                    **params)


def sweep_configs(config_path, overrides: list[str], sweep: list[str]) -> list[dict]:
    """One resolved training config (as a mapping) per sweep point, each in its own run directory
    `RUN_DIR/key=value,...` when there is a sweep."""
    base = load_config(config_path, TrainConfig, overrides)
    configs = []
    for point in sweep_points(sweep):
        point_overrides = list(overrides) + [f"{k}={v}" for k, v in point.items()]
        if point:
            tag = ",".join(f"{k}={v}" for k, v in point.items())
            point_overrides.append(f"run_dir={Path(base.run_dir) / tag}")
        configs.append(to_dict(load_config(config_path, TrainConfig, point_overrides)))
    return configs


def check_configs(configs: list[dict], res: JobResources) -> None:
    """Every global batch divides by the ranks, and no run directory would break the batch script."""
    ranks = res.ranks_per_node * res.nodes
    for cfg in configs:
        check_script_text("run_dir", str(cfg["run_dir"]))
        if cfg["schedule"]["batch_size"] % ranks:
            raise ConfigError(f"schedule.batch_size {cfg['schedule']['batch_size']} is not divisible by "
                              f"{ranks} ranks")


def submit(configs: list[dict], res: JobResources, folder: Path, local: bool = False) -> list:
    """Submit one job per config (a job array for several); a refusal by sbatch is a `SubmitError` with
    sbatch's message (submitit would print it and raise a multi-line error)."""
    check_configs(configs, res)
    executor = make_executor(res, folder, local)
    captured = io.StringIO()
    before = set(folder.rglob("*")) if folder.is_dir() else set()
    try:
        with contextlib.redirect_stderr(captured):
            if len(configs) == 1:
                jobs = [executor.submit(TrainJob(), configs[0])]
            else:
                jobs = list(executor.map_array(TrainJob(), configs))
    except FailedJobError as exc:
        for leftover in set(folder.rglob("*")) - before:      # the pickles and script of the refused job
            if leftover.is_file() or leftover.is_symlink():
                leftover.unlink()
        lines = [line.strip() for line in (str(exc) or captured.getvalue()).splitlines() if line.strip()]
        raise SubmitError(f"sbatch refused the job: {'; '.join(lines) or 'no message'}") from None
    sys.stderr.write(captured.getvalue())       # submitit's warnings, if any
    return jobs


_ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def slurm_state(job_id: str) -> str | None:
    """The job's state from `squeue` (which works without accounting, unlike submitit's `sacct`), or None
    once Slurm has forgotten the job."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN"
    states = out.stdout.split()
    if out.returncode != 0 or not states:
        return None
    return states[0]


def _results_written(job) -> bool:
    return all(job.task(k).paths.result_pickle.exists() for k in range(job.num_tasks))


def wait_and_report(jobs, local: bool = False, poll_s: float = 2.0, grace_s: float = 20.0) -> int:
    """Wait until every job has written its results (all tasks), or has left Slurm without them; print one
    line per job and return 1 if any failed. Polls the result files and `squeue` rather than submitit's
    `sacct` watcher, so it works on clusters without accounting and cannot wait forever on a killed job."""
    pending, failed, gone_since, state = list(jobs), 0, {}, None
    while pending:
        for job in list(pending):
            if local:
                done = job.done()
            else:
                done = _results_written(job)
                state = None if done else slurm_state(job.job_id)
                if not done and (state is None or state in _ENDED):
                    # results are written before the job ends: allow a little file-system delay
                    gone_since.setdefault(job.job_id, time.time())
                    done = time.time() - gone_since[job.job_id] > grace_s
                else:
                    gone_since.pop(job.job_id, None)
            if not done:
                continue
            pending.remove(job)
            if not local and not _results_written(job):
                failed += 1
                print(f"job {job.job_id} ended ({state or 'no longer in squeue'}) without results "
                      f"(logs {job.paths.stdout}, {job.paths.stderr})", flush=True)
                continue
            try:
                result = job.results()[0]
                reason = result.get("stop_reason") or result.get("status") if isinstance(result, dict) else result
                print(f"job {job.job_id} finished: {reason}", flush=True)
            except Exception as exc:  # noqa: BLE001 - submitit re-raises the job's own exception
                failed += 1
                message = str(exc).strip().splitlines()
                print(f"job {job.job_id} failed: {message[-1] if message else type(exc).__name__} "
                      f"(logs {job.paths.stdout}, {job.paths.stderr})", flush=True)
        if pending:
            time.sleep(poll_s)
    return 1 if failed else 0
