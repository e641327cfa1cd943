"""Print the table n → far-field discretisation error of docs/physics.md (markdown, one row per family and n).

Each row is `bcrdist.data.discretisation.compute_record` of a data config with `n` (and the given overrides)
replaced: K samples re-solved at 2n, and the single-disc ones against the Mie series — the numbers
`bcrdist generate --accuracy-samples K` records in a manifest, without generating the data set.

    .venv/bin/python tools/discretisation_table.py --samples 4 --n 32 48 64 100 128 \
        --row discs configs/data/study_discs.yaml \
        --row "single disc" configs/data/study_discs.yaml "family.discs.count=[1,1]"
"""

from __future__ import annotations

import argparse
import time

import torch

from bcrdist.config import load_config
from bcrdist.data.discretisation import compute_record
from bcrdist.physics.generation_config import GenerationConfig


def percent(summary: dict | None, key: str) -> str:
    return "–" if summary is None else f"{100 * summary[key]:.2g} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", action="append", nargs="+", required=True, metavar="LABEL CONFIG [KEY=VALUE]",
                        help="a group of rows: its label, a data config and --set overrides")
    parser.add_argument("--n", type=int, nargs="+", default=[32, 48, 64, 100, 128])
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| family | n | vs 2n: median | vs 2n: max | vs Mie: median | vs Mie: max | samples (Mie) | s per sample |")
    print("|---|---|---|---|---|---|---|---|")
    for label, path, *overrides in args.row:
        for n in args.n:
            cfg = load_config(path, GenerationConfig, [*overrides, f"n={n}", "image_size=0"])
            start = time.monotonic()
            record = compute_record(cfg, args.samples)
            fine, mie = record["far_field_error_fine"], record["far_field_error_mie"]
            solved = len(set(record["samples"]) | set(record["mie_samples"]))
            print(f"| {label} | {n} | {percent(fine, 'median')} | {percent(fine, 'max')} | "
                  f"{percent(mie, 'median')} | {percent(mie, 'max')} | {len(record['samples'])} "
                  f"({len(record['mie_samples'])}) | {(time.monotonic() - start) / solved:.2f} |", flush=True)


if __name__ == "__main__":
    main()
