"""`bcrdist shard SRC OUT --samples-per-shard N`: convert an original HDF5 file into a sharded data set."""

from __future__ import annotations

import argparse

from bcrdist.data.cli_common import megabytes, progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="source HDF5 file (Fan's {prefix}.h5 or the far-field/image .hdf5)")
    parser.add_argument("out", help="output data-set directory (created; a rerun resumes)")
    parser.add_argument("--samples-per-shard", type=int, required=True, metavar="N",
                        help="samples per shard file (e.g. 1000–10000: a few hundred MB per shard)")
    parser.add_argument("--layout", choices=("auto", "fan", "farfield"), default="auto",
                        help="source layout (default: detected from the dataset names)")
    parser.add_argument("--slab-mb", type=megabytes, default=256 << 20, dest="slab_bytes", metavar="MB",
                        help="copy each dataset in slabs of about this size; peak memory is a few slabs (default 256)")
    parser.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/inf values in the source")
    parser.add_argument("--quiet", action="store_true", help="no per-shard progress lines")


def run(args: argparse.Namespace) -> int:
    from bcrdist.data.convert import shard_file
    from bcrdist.data.mpi import world

    comm = world()
    shard_file(args.src, args.out, args.samples_per_shard, layout=args.layout, slab_bytes=args.slab_bytes,
               allow_nonfinite=args.allow_nonfinite, comm=comm, log=progress(comm, args.quiet))
    return 0
