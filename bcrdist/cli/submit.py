"""`bcrdist submit`: training jobs (and sweeps as job arrays) through submitit (`bcrdist.launch.submit`).

    bcrdist submit --config CFG.yaml --nodes 2 --gpus-per-node 4 --partition gpu --time 240 \\
        [--account A --qos Q --constraint C --mem 64G --exclusive --sbatch KEY=VALUE --setup LINE] \\
        [--slurm-config SITE.yaml] [--sweep data.noise=0,5,10] [--set key=value ...] [--local] [--wait]

Each submission is recorded in RUN_DIR/submissions.jsonl (`bcrdist.launch.jobs`), which `bcrdist jobs RUN_DIR`
lists and cancels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bcrdist.config import find_config, load_config
from bcrdist.errors import ConfigError
from bcrdist.launch.jobs import record_submission, submission_record
from bcrdist.launch.submit import (SLURM_CONFIG_VAR, batch_script, check_configs, load_resources, make_executor,
                                   submit, sweep_configs, wait_and_report)
from bcrdist.train.config import TrainConfig


def _sbatch_option(text: str) -> tuple[str, str | bool]:
    """'mail-type=END' → ('mail-type', 'END'); a bare 'requeue' is the flag --requeue."""
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE (an sbatch option without its --)")
    return key, (value if sep else True)


def add_submit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True,
                   help="training config; a path not found here is looked up in bcrdist's packaged configs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="one job per combination of values (a job array); repeatable")
    g = p.add_argument_group("resources (default: --slurm-config, then the built-in defaults)")
    g.add_argument("--slurm-config", metavar="SITE.yaml",
                   help=f"YAML file of the resource keys below, with _ for - (default ${SLURM_CONFIG_VAR})")
    g.add_argument("--nodes", type=int)
    g.add_argument("--gpus-per-node", type=int)
    g.add_argument("--gpus-per-task", type=int, help="GPUs bound to each task (each task sees its own as cuda:0)")
    g.add_argument("--tasks-per-node", type=int, help="ranks per node (default: GPUs per node, or 1)")
    g.add_argument("--cpus-per-task", type=int)
    g.add_argument("--partition")
    g.add_argument("--account", help="the account (project) the job is charged to")
    g.add_argument("--qos", help="quality of service")
    g.add_argument("--constraint", help="node features, e.g. 'a100&ib'")
    g.add_argument("--mem", help="memory per node: 64G, 500M, 0 = all of it")
    g.add_argument("--exclusive", action=argparse.BooleanOptionalAction, default=None, help="whole nodes")
    g.add_argument("--sbatch", action="append", type=_sbatch_option, metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --sbatch mail-type=END --sbatch gres=gpu:4 (repeatable)")
    g.add_argument("--setup", action="append", metavar="LINE",
                   help="a shell line run before the job starts, e.g. --setup 'module load cuda/12.4' (repeatable)")
    g.add_argument("--time", type=int, help="time limit in minutes (default 60)")
    g.add_argument("--signal-delay", type=int, help="seconds of warning before the time limit (default 120)")
    g.add_argument("--max-timeouts", type=int, help="requeues after time limits (default 3)")
    p.add_argument("--folder", help="submitit logs (default RUN_DIR/submitit)")
    p.add_argument("--local", action="store_true", help="run here with submitit's LocalExecutor (one node)")
    p.add_argument("--dry-run", action="store_true", help="print the batch script sbatch would get; submit nothing")
    p.add_argument("--wait", action="store_true", help="wait for the jobs and print their results")


def run_submit(args: argparse.Namespace) -> int:
    config = find_config(args.config)
    configs = sweep_configs(config, args.overrides, args.sweep)
    res = load_resources(args.slurm_config, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                         gpus_per_task=args.gpus_per_task, tasks_per_node=args.tasks_per_node,
                         cpus_per_task=args.cpus_per_task, partition=args.partition, account=args.account,
                         qos=args.qos, constraint=args.constraint, mem=args.mem, exclusive=args.exclusive,
                         sbatch=dict(args.sbatch) if args.sbatch else None, setup=args.setup, time=args.time,
                         signal_delay=args.signal_delay, max_timeouts=args.max_timeouts)
    base_run_dir = load_config(config, TrainConfig, args.overrides).run_dir
    folder = Path(args.folder) if args.folder else Path(base_run_dir) / "submitit"
    if args.dry_run:
        if args.local:
            raise ConfigError("--dry-run shows the Slurm batch script: leave out --local")
        check_configs(configs, res)
        print(batch_script(make_executor(res, folder), len(configs)), end="")
        return 0
    jobs = submit(configs, res, folder, local=args.local)
    for job, cfg in zip(jobs, configs):
        print(f"job {job.job_id}: run {cfg['run_dir']}, logs {job.paths.stdout}", flush=True)
    # after the job lines: a record that cannot be written must not hide the ids of jobs already submitted
    record = submission_record(jobs, configs, argv=sys.argv, cluster="local" if args.local else "slurm",
                               folder=folder)
    record_submission(base_run_dir, record)
    if args.wait:
        return wait_and_report(jobs, local=args.local)
    return 0
