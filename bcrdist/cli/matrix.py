"""`bcrdist matrix`: an accuracy matrix from one YAML spec (`bcrdist.launch.matrix_spec`) — its steps run here or
as Slurm jobs, then its section of a results file, with plots.

    bcrdist matrix --spec configs/experiments/NAME.yaml [--work DIR] [--results docs/results.md] \\
        [--launcher local|slurm] [--nproc 2] [--slurm-config SITE.yaml] [--dry-run]
    bcrdist matrix status --spec configs/experiments/NAME.yaml [--work DIR]

Every step is one bcrdist command (generate, stats, split, train, evaluate, baseline). `--launcher local` runs
them here in order (`torchrun` and `mpiexec` when --nproc > 1); `--launcher slurm` submits each step not yet
done as a job that starts after the jobs of the steps it needs (afterok), with the resources of its kind
(the spec's `resources`), and returns; rerun the same command when they have ended to write the section (it
submits again only the steps that are missing or failed). A step whose outputs validate is skipped.
`--dry-run` prints the steps (and, with slurm, the job graph and each step's estimated cost) and runs nothing.
Exit: 0 done (or submitted), 1 a step failed, 2 a bad spec, work folder or results file.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from bcrdist.errors import ConfigError
from bcrdist.launch.matrix import Matrix, WorkLock, run_local
from bcrdist.launch.matrix_report import write_results
from bcrdist.launch.matrix_spec import load_spec


def add_matrix_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=("run", "status"), default="run",
                   help="run (default): run or submit the steps not yet done, then write the section; status: "
                        "each step's state")
    p.add_argument("spec_path", nargs="?", metavar="SPEC", help="the spec (same as --spec)")
    p.add_argument("--spec", help="matrix spec (configs/experiments/NAME.yaml)")
    p.add_argument("--work", default=None, help="folder for data, runs and evaluations (default: the spec's "
                                                "`work`, else runs/matrix-NAME)")
    p.add_argument("--results", default="docs/results.md", help="results file whose section is (re)written")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: run the steps here, one after another; slurm: one job per step, with afterok "
                        "dependencies")
    p.add_argument("--nproc", type=int, default=2, help="local: training processes under torchrun (and "
                                                        "generation ranks under mpiexec); 1: plain processes")
    p.add_argument("--slurm-config", default=None, metavar="SITE.yaml",
                   help="slurm: the site's job defaults (as `bcrdist submit --slurm-config`), under the spec's "
                        "resources")
    p.add_argument("--dry-run", action="store_true", help="print the steps (which are done, what would run); run "
                                                          "and submit nothing")


def _spec_path(args: argparse.Namespace) -> str:
    if args.spec and args.spec_path and args.spec != args.spec_path:
        raise ConfigError(f"two specs given: {args.spec_path} and --spec {args.spec}")
    path = args.spec or args.spec_path
    if not path:
        raise ConfigError("--spec: expected the matrix spec (configs/experiments/NAME.yaml)")
    return path


def run_matrix(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise ConfigError(f"--nproc: expected a number ≥ 1, got {args.nproc}")
    path = _spec_path(args)
    spec = load_spec(path)
    work = Path(args.work or spec.work or f"runs/matrix-{spec.name}")
    matrix = Matrix(spec, work)
    command = shlex.join(["bcrdist", "matrix", *sys.argv[2:]]) if sys.argv[1:2] == ["matrix"] else \
        f"bcrdist matrix --spec {path}"
    if args.action == "status":
        from bcrdist.launch.matrix_slurm import print_status
        return print_status(matrix)
    if args.launcher == "slurm":
        from bcrdist.launch.matrix_slurm import launch_slurm
        return launch_slurm(matrix, site=args.slurm_config, dry_run=args.dry_run, results=Path(args.results),
                            command=command, spec_path=path)
    if not args.dry_run:
        work.mkdir(parents=True, exist_ok=True)
    lock = WorkLock(work)
    if not args.dry_run:
        lock.acquire()
    try:
        status, commands = run_local(matrix, args.nproc, args.dry_run)
    finally:
        lock.release()
    if status or args.dry_run:
        return status
    written = write_results(matrix, Path(args.results), commands, command, spec_path=path)
    print(f"bcrdist matrix: section '{spec.name}' written to {args.results}; figures {', '.join(written)}",
          file=sys.stderr)
    return 0

