"""`bcrdist stats DATA`: streaming min/max/mean/std per field, stored into the manifest."""

from __future__ import annotations

import argparse

from bcrdist.data.cli_common import megabytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="data-set directory")
    parser.add_argument("--slab-mb", type=megabytes, default=64 << 20, dest="slab_bytes", metavar="MB",
                        help="read this much of one dataset at a time (default 64)")


def run(args: argparse.Namespace) -> int:
    from bcrdist.data.mpi import world
    from bcrdist.data.stats import store_statistics

    comm = world()
    stats = store_statistics(args.data, comm=comm, slab_bytes=args.slab_bytes)
    if comm.rank == 0:
        print(f"{'field':<16} {'count':>12} {'min':>13} {'max':>13} {'mean':>13} {'std':>13} {'nonfinite':>9}")
        for field, s in stats.items():
            cells = [f"{s[k]:>13.6g}" if s[k] is not None else f"{'-':>13}" for k in ("min", "max", "mean", "std")]
            print(f"{field:<16} {s['count']:>12} {' '.join(cells)} {s['nonfinite']:>9}")
    return 0
