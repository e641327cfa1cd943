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
    parser.add_argument("--accuracy-samples", type=int, default=None, metavar="K",
                        help="re-solve K samples on a grid twice as fine (single discs also against the Mie "
                             "series) and record the far fields' discretisation error in the manifest (default "
                             "4; 0 skips it; a rerun keeps the record found unless given another K)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the solver runs (default cpu); cuda: one GPU per rank (by local rank), needs "
                             "solver.backend: torch (the numpy backend is CPU-only and is refused with cuda)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def computed_text(written: int, samples: int) -> str:
    """What this call computed of a data set of `samples` samples, of which `written` were missing."""
    if written >= samples:
        return "all computed now"
    if written == 0:
        return "all already complete, none computed now"
    return f"{written} computed now, the rest already complete"


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from bcrdist.data.discretisation import check_sample_count, describe
    from bcrdist.data.generate import generate
    from bcrdist.distributed.mpi import world
    from bcrdist.physics.generation_config import GenerationConfig

    if args.threads < 1:
        raise ConfigError(f"--threads: must be ≥ 1, got {args.threads}")
    if args.accuracy_samples is not None:
        check_sample_count(args.accuracy_samples)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no GPU here (torch.cuda.is_available() is False); use "
                          "--device cpu")
    cfg = load_config(args.config, GenerationConfig, args.overrides)
    if args.device == "cuda" and cfg.solver.backend != "torch":
        raise ConfigError("--device cuda: needs solver.backend: torch (the numpy backend runs on the CPU only); "
                          "add --set solver.backend=torch")
    with one_line_os_errors():
        summary = generate(cfg, args.out, threads=args.threads, progress=not args.quiet,
                           accuracy_samples=args.accuracy_samples, device=args.device)
    if not args.quiet and world().rank == 0:
        rate = summary["seconds"] / max(1, summary["written"])
        print(f"bcrdist generate: {summary['samples']} samples in {summary['shards']} shards at {args.out} "
              f"({computed_text(summary['written'], summary['samples'])}; {summary['seconds']:.1f} s on "
              f"{summary['ranks']} rank(s), {rate:.3f} s per computed sample; GMRES at most "
              f"{summary['max_iterations']} iterations, largest relative residual {summary['max_residual']:.1e})",
              file=sys.stderr)
        record = summary["discretisation"]
        if record:
            print(f"bcrdist generate: {describe(record)} ({record['seconds']:.1f} s)", file=sys.stderr)
    return 0

