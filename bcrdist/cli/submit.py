"""`bcrdist submit`: training jobs (and sweeps as job arrays) through submitit (`bcrdist.launch.submit`).

    bcrdist submit --config CFG.yaml --nodes 2 --gpus-per-node 4 --partition gpu --time 240 \\
        [--sweep data.noise=0,5,10] [--set key=value ...] [--local] [--wait]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bcrdist.config import load_config
from bcrdist.launch.submit import JobResources, submit, sweep_configs, wait_and_report
from bcrdist.train.config import TrainConfig


def add_submit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="one job per combination of values (a job array); repeatable")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--tasks-per-node", type=int, help="ranks per node (default: GPUs per node, or 1)")
    p.add_argument("--cpus-per-task", type=int, default=1)
    p.add_argument("--partition")
    p.add_argument("--time", type=int, default=60, help="time limit in minutes")
    p.add_argument("--signal-delay", type=int, default=120, help="seconds of warning before the time limit")
    p.add_argument("--max-timeouts", type=int, default=3, help="requeues after time limits")
    p.add_argument("--folder", help="submitit logs (default RUN_DIR/submitit)")
    p.add_argument("--local", action="store_true", help="run here with submitit's LocalExecutor (one node)")
    p.add_argument("--wait", action="store_true", help="wait for the jobs and print their results")


def run_submit(args: argparse.Namespace) -> int:
    configs = sweep_configs(args.config, args.overrides, args.sweep)
    res = JobResources(nodes=args.nodes, tasks_per_node=args.tasks_per_node or max(args.gpus_per_node, 1),
                       cpus_per_task=args.cpus_per_task, gpus_per_node=args.gpus_per_node, time_min=args.time,
                       partition=args.partition, signal_delay_s=args.signal_delay, max_timeouts=args.max_timeouts,
                       local=args.local)
    base_run_dir = load_config(args.config, TrainConfig, args.overrides).run_dir
    folder = Path(args.folder) if args.folder else Path(base_run_dir) / "submitit"
    jobs = submit(configs, res, folder)
    for job, cfg in zip(jobs, configs):
        print(f"job {job.job_id}: run {cfg['run_dir']}, logs {job.paths.stdout}")
    if args.wait:
        return wait_and_report(jobs, local=args.local)
    return 0
