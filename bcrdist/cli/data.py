"""The data-set commands: `bcrdist shard | verify | merge | split | stats`.

- `bcrdist shard SRC OUT --samples-per-shard N`: convert an original HDF5 file into a sharded data set.
- `bcrdist verify DATA`: check checksums, shapes, dtypes, values and splits of a sharded data set; `--physics`
  also re-solves a few samples on a grid twice as fine (and single discs against the Mie series) and records
  the far fields' discretisation error in the manifest.
- `bcrdist merge DATA OUT`: write a sharded data set back into one HDF5 file.
- `bcrdist split DATA`: write train/test (and validation) split files for a sharded data set.
- `bcrdist stats DATA`: streaming min/max/mean/std per field, stored into the manifest.

Under mpiexec/srun, shard, verify and stats share the shards among the ranks. None of them replaces another
data set, existing splits or an existing merged file without `--overwrite`; a failed write (disk full, I/O
error) is one line naming the file, with the files that were there before left intact.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Callable, Iterator

from bcrdist.errors import DataError


@contextlib.contextmanager
def one_line_os_errors() -> Iterator[None]:
    """Report an OSError the data tools did not name already (permissions, …) as a one-line DataError."""
    from bcrdist.fileio import os_message

    try:
        yield
    except OSError as exc:
        raise DataError(os_message(exc)) from None


def progress(comm, quiet: bool) -> Callable[[str], None]:
    """A logger for per-shard progress lines: flushed at once, prefixed with the rank under MPI."""
    if quiet:
        return lambda _: None
    prefix = f"[rank {comm.rank}/{comm.size}] " if comm.size > 1 else ""

    def log(message: str) -> None:
        print(prefix + message, flush=True)

    return log


def megabytes(value: str) -> int:
    """argparse type: a positive size in MiB → bytes."""
    size = float(value)
    if not size > 0:
        raise ValueError(f"size must be positive, got {value}")
    return int(size * (1 << 20))


def fail(problems: list[str]) -> int:
    """Print each problem on its own line to stderr; exit status 2."""
    for problem in problems:
        print(problem, file=sys.stderr)
    return 2


def add_shard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="source HDF5 file (Fan's {prefix}.h5 or the far-field/image .hdf5)")
    parser.add_argument("out", help="output data-set directory (created; a rerun resumes)")
    parser.add_argument("--samples-per-shard", type=int, required=True, metavar="N",
                        help="samples per shard file (e.g. 1000–10000: a few hundred MB per shard)")
    parser.add_argument("--layout", choices=("auto", "fan", "farfield"), default="auto",
                        help="source layout (default: detected from the dataset names)")
    parser.add_argument("--slab-mb", type=megabytes, default=256 << 20, dest="slab_bytes", metavar="MB",
                        help="copy each dataset in slabs of about this size; peak memory is a few slabs (default 256)")
    parser.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/inf values in the source")
    parser.add_argument("--overwrite", action="store_true",
                        help="OUT holds another data set: delete it (manifest, shards, its splits) and convert "
                             "(default: refuse)")
    parser.add_argument("--quiet", action="store_true", help="no per-shard progress lines")
    grid = parser.add_argument_group("the grid of a far-field/image file (recorded in the manifest when --k and "
                                     "--box are given)")
    grid.add_argument("--k", type=float, help="wavenumber of the far field (absolute units)")
    grid.add_argument("--box", type=float, help="side L of the square [−L/2, L/2]² the image covers (the port: 2)")
    grid.add_argument("--angles", choices=("endpoint", "periodic"),
                      help="direction grid: endpoint −π + 2πj/(Na−1) (default, the port's) or periodic 2πj/Na")
    grid.add_argument("--image-points", choices=("nodes", "centres"),
                      help="pixels at the nodes (both edges; default, the port's) or at the cell centres")
    grid.add_argument("--image-index", choices=("xy", "yx"), help="image[i, j] = η(x_i, y_j) (xy, default) or "
                      "its transpose")
    grid.add_argument("--sign", type=int, choices=(-1, 1),
                      help="far-field sign: −1 e^{−ik x̂·y} (ours), +1 the conjugate (the port's); default unknown")


def run_shard(args: argparse.Namespace) -> int:
    from bcrdist.data.convert import shard_file
    from bcrdist.distributed.mpi import world

    comm = world()
    with one_line_os_errors():
        shard_file(args.src, args.out, args.samples_per_shard, layout=args.layout, slab_bytes=args.slab_bytes,
                   allow_nonfinite=args.allow_nonfinite, overwrite=args.overwrite, comm=comm,
                   grid={key: getattr(args, key) for key in ("k", "box", "angles", "image_points", "image_index",
                                                             "sign")},
                   log=progress(comm, args.quiet))
    return 0


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="data-set directory")
    parser.add_argument("--no-checksums", action="store_true", help="skip the SHA-256 of each shard")
    parser.add_argument("--no-scan", action="store_true", help="skip the NaN/inf scan of the values")
    parser.add_argument("--physics", action="store_true",
                        help="then estimate the far fields' discretisation error (a data set made by `bcrdist "
                             "generate`: K samples re-solved at 2n, single discs against the Mie series) and "
                             "record it in the manifest")
    parser.add_argument("--accuracy-samples", type=int, default=4, metavar="K",
                        help="samples of --physics (default 4)")
    parser.add_argument("--quiet", action="store_true", help="no per-shard progress lines")


def run_verify(args: argparse.Namespace) -> int:
    from bcrdist.data.discretisation import check_sample_count, store_record
    from bcrdist.data.format import read_manifest
    from bcrdist.distributed.mpi import world
    from bcrdist.data.verify import verify_dataset

    check_sample_count(args.accuracy_samples)
    comm = world()
    with one_line_os_errors():
        problems = verify_dataset(args.data, checksums=not args.no_checksums, scan=not args.no_scan, comm=comm,
                                  log=progress(comm, args.quiet))
        if args.physics and not problems:
            store_record(args.data, args.accuracy_samples, comm=comm)
    if comm.rank != 0:
        return 2 if problems else 0
    if problems:
        return fail(problems)
    manifest = read_manifest(args.data)
    print(f"{manifest.root}: ok ({manifest.num_samples} samples in {len(manifest.shards)} shards, "
          f"data set {manifest.dataset_id})")
    _print_discretisation(manifest)
    return 0


def _print_discretisation(manifest) -> None:
    """The manifest's discretisation-error line (`bcrdist.data.discretisation`), for a generated data set."""
    from bcrdist.data.discretisation import RECORD_KEY, describe

    if manifest.raw.get(RECORD_KEY) or manifest.provenance.get("tool") == "bcrdist generate":
        print(describe(manifest.raw.get(RECORD_KEY)))


def add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="data-set directory")
    parser.add_argument("out", help="output HDF5 file")
    parser.add_argument("--layout", choices=("auto", "original", "samples"), default="auto",
                        help="original: the file `shard` converted from (byte-identical data); samples: every "
                             "dataset as (N, ...); auto: original when recorded (default)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--slab-mb", type=megabytes, default=256 << 20, dest="slab_bytes", metavar="MB",
                        help="copy each dataset in slabs of about this size; peak memory is a few slabs (default 256)")


def run_merge(args: argparse.Namespace) -> int:
    from bcrdist.data.merge import merge_dataset

    with one_line_os_errors():
        out = merge_dataset(args.data, args.out, layout=args.layout, overwrite=args.overwrite,
                            slab_bytes=args.slab_bytes)
    print(f"wrote {out}")
    return 0


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="data-set directory")
    parser.add_argument("--percent", default="0.8",
                        help="training fraction, a number or a quotient (original rule: train = first "
                             "int(N·percent), test = next min(max(n_train, 5000), N − n_train)); default 0.8; "
                             "Ma's default is .3/.4")
    parser.add_argument("--val", type=int, default=0, metavar="N",
                        help="carve a validation split of N samples from the end of the training part")
    parser.add_argument("--random", action="store_true",
                        help="permute the samples (seeded) before splitting; sizes as the original rule")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split (default 0)")
    parser.add_argument("--out", default=None, metavar="DIR", help="directory for the split files "
                        "(default DATA/splits, where readers find them by name)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing split files that differ (default: refuse; identical ones are kept)")


def run_split(args: argparse.Namespace) -> int:
    from bcrdist.data.splits import load_split, parse_fraction, write_splits
    from bcrdist.data.format import read_manifest

    with one_line_os_errors():
        paths = write_splits(args.data, parse_fraction(args.percent), val=args.val, random=args.random,
                             seed=args.seed, out_dir=args.out, overwrite=args.overwrite)
    manifest = read_manifest(args.data)
    for name, path in paths.items():
        print(f"{name}: {len(load_split(manifest, path))} samples → {path}")
    return 0


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="data-set directory")
    parser.add_argument("--slab-mb", type=megabytes, default=64 << 20, dest="slab_bytes", metavar="MB",
                        help="read this much of one dataset at a time (default 64)")


def run_stats(args: argparse.Namespace) -> int:
    from bcrdist.data.format import read_manifest
    from bcrdist.distributed.mpi import world
    from bcrdist.data.stats import store_statistics

    comm = world()
    with one_line_os_errors():
        stats = store_statistics(args.data, comm=comm, slab_bytes=args.slab_bytes)
    if comm.rank == 0:
        print(f"{'field':<16} {'count':>12} {'min':>13} {'max':>13} {'mean':>13} {'std':>13} {'nonfinite':>9}")
        for field, s in stats.items():
            cells = [f"{s[k]:>13.6g}" if s[k] is not None else f"{'-':>13}" for k in ("min", "max", "mean", "std")]
            print(f"{field:<16} {s['count']:>12} {' '.join(cells)} {s['nonfinite']:>9}")
        _print_discretisation(read_manifest(args.data))
    return 0
