"""`bcrdist split DATA`: write train/test (and validation) split files for a sharded data set."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    from bcrdist.data.splits import load_split, parse_fraction, write_splits
    from bcrdist.data.format import read_manifest

    paths = write_splits(args.data, parse_fraction(args.percent), val=args.val, random=args.random,
                         seed=args.seed, out_dir=args.out)
    manifest = read_manifest(args.data)
    for name, path in paths.items():
        print(f"{name}: {len(load_split(manifest, path))} samples → {path}")
    return 0
