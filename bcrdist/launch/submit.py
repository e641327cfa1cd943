"""`bcrdist submit`: training jobs (and sweeps as job arrays) through submitit.

    bcrdist submit --config CFG.yaml --nodes 2 --gpus-per-node 4 --partition gpu --time 240 \\
        [--sweep data.noise=0,5,10] [--set key=value ...] [--local] [--wait]

The job callable is Checkpointable: on a time limit or preemption (SIGUSR2, `--signal-delay` seconds
ahead) the training loop saves `last.pt` at its next step boundary, then rank 0 hands over to submitit,
which requeues the job; the requeued job resumes from `last.pt`. Ranks come from
`submitit.helpers.TorchDistributedEnvironment`. A sweep is a job array, one element per combination of
the `--sweep` values, each in its own run directory `RUN_DIR/key=value,...`. `--local` runs on this
machine with submitit's LocalExecutor (one node).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from bcrdist.config import from_dict, load_config, parse_yaml, to_dict
from bcrdist.errors import ConfigError
from bcrdist.train.config import TrainConfig


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
            raise ConfigError(f"--sweep {spec!r}: expected key=v1,v2,...")
        axes.append([(key.strip(), parse_yaml(v)) for v in values.split(",")])
    return [dict(point) for point in itertools.product(*axes)] if axes else [{}]


@dataclass(frozen=True)
class JobResources:
    """What one training job asks the scheduler for (`local`: submitit's LocalExecutor on this machine)."""

    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    time_min: int = 60
    partition: str | None = None
    signal_delay_s: int = 120
    max_timeouts: int = 3
    local: bool = False


def make_executor(res: JobResources, folder: Path):
    """A submitit executor for `res`, logging into `folder`."""
    if res.local:
        if res.nodes != 1:
            raise ConfigError("--local runs on this machine: it needs --nodes 1")
        executor = submitit.AutoExecutor(folder=folder, cluster="local")
    else:
        # max_num_timeout is a constructor argument of the Slurm executor, not an update_parameters one
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=res.max_timeouts)
    params = dict(nodes=res.nodes, tasks_per_node=res.tasks_per_node, cpus_per_task=res.cpus_per_task,
                  timeout_min=res.time_min, name="bcrdist-train")
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if not res.local:
        params.update(slurm_signal_delay_s=res.signal_delay_s)
        if res.partition:
            params["slurm_partition"] = res.partition
    executor.update_parameters(**params)
    return executor


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


def submit(configs: list[dict], res: JobResources, folder: Path) -> list:
    """Submit one job per config (a job array for several); checks that every global batch divides."""
    ranks = res.tasks_per_node * res.nodes
    for cfg in configs:
        if cfg["schedule"]["batch_size"] % ranks:
            raise ConfigError(f"schedule.batch_size {cfg['schedule']['batch_size']} is not divisible by "
                              f"{ranks} ranks")
    executor = make_executor(res, folder)
    if len(configs) == 1:
        return [executor.submit(TrainJob(), configs[0])]
    return list(executor.map_array(TrainJob(), configs))


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
