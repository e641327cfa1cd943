"""`bcrdist verify DATA`: check checksums, shapes, dtypes, values and splits of a sharded data set."""

from __future__ import annotations

import argparse

from bcrdist.data.cli_common import fail, progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="data-set directory")
    parser.add_argument("--no-checksums", action="store_true", help="skip the SHA-256 of each shard")
    parser.add_argument("--no-scan", action="store_true", help="skip the NaN/inf scan of the values")
    parser.add_argument("--quiet", action="store_true", help="no per-shard progress lines")


def run(args: argparse.Namespace) -> int:
    from bcrdist.data.format import read_manifest
    from bcrdist.data.mpi import world
    from bcrdist.data.verify import verify_dataset

    comm = world()
    problems = verify_dataset(args.data, checksums=not args.no_checksums, scan=not args.no_scan, comm=comm,
                              log=progress(comm, args.quiet))
    if comm.rank != 0:
        return 2 if problems else 0
    if problems:
        return fail(problems)
    manifest = read_manifest(args.data)
    print(f"{manifest.root}: ok ({manifest.num_samples} samples in {len(manifest.shards)} shards, "
          f"data set {manifest.dataset_id})")
    return 0
