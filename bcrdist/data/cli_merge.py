"""`bcrdist merge DATA OUT`: write a sharded data set back into one HDF5 file."""

from __future__ import annotations

import argparse

from bcrdist.data.cli_common import megabytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="data-set directory")
    parser.add_argument("out", help="output HDF5 file")
    parser.add_argument("--layout", choices=("auto", "original", "samples"), default="auto",
                        help="original: the file `shard` converted from (byte-identical data); samples: every "
                             "dataset as (N, ...); auto: original when recorded (default)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--slab-mb", type=megabytes, default=256 << 20, dest="slab_bytes", metavar="MB",
                        help="copy each dataset in slabs of about this size; peak memory is a few slabs (default 256)")


def run(args: argparse.Namespace) -> int:
    from bcrdist.data.merge import merge_dataset

    out = merge_dataset(args.data, args.out, layout=args.layout, overwrite=args.overwrite,
                        slab_bytes=args.slab_bytes)
    print(f"wrote {out}")
    return 0
