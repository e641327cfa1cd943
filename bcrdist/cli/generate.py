"""`bcrdist generate`: write a training data set with the forward scattering solver (MPI-parallel)."""

from __future__ import annotations

import argparse
import sys

from bcrdist.cli.data import one_line_os_errors
from bcrdist.config import load_config
from bcrdist.errors import ConfigError


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="data config YAML (e.g. configs/data/demo.yaml)")
    parser.add_argument("--out", required=True, help="output directory (manifest.json + shard-*.h5)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. --set samples=64 --set family.name=shapes")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (default 1: run one MPI rank per core instead)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def computed_text(written: int, samples: int) -> str:
    """What this call computed of a data set of `samples` samples, of which `written` were missing."""
    if written >= samples:
        return "all computed now"
    if written == 0:
        return "all already complete, none computed now"
    return f"{written} computed now, the rest already complete"


def run_generate(args: argparse.Namespace) -> int:
    from bcrdist.data.generate import generate
    from bcrdist.distributed.mpi import world
    from bcrdist.physics.generation_config import GenerationConfig

    if args.threads < 1:
        raise ConfigError(f"--threads: must be ≥ 1, got {args.threads}")
    cfg = load_config(args.config, GenerationConfig, args.overrides)
    with one_line_os_errors():
        summary = generate(cfg, args.out, threads=args.threads, progress=not args.quiet)
    if not args.quiet and world().rank == 0:
        rate = summary["seconds"] / max(1, summary["written"])
        print(f"bcrdist generate: {summary['samples']} samples in {summary['shards']} shards at {args.out} "
              f"({computed_text(summary['written'], summary['samples'])}; {summary['seconds']:.1f} s on "
              f"{summary['ranks']} rank(s), {rate:.3f} s per computed sample; GMRES at most "
              f"{summary['max_iterations']} iterations, largest relative residual {summary['max_residual']:.1e})",
              file=sys.stderr)
    return 0

