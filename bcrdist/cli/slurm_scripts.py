"""`bcrdist slurm-scripts --out DIR`: write the sbatch scripts that ship with bcrdist (train, train_torchrun,
generate, shard) into DIR, for `sbatch DIR/train.sbatch CONFIG.yaml` on a cluster where bcrdist is installed
(`bcrdist.launch.slurm_scripts`). A script already there with the same bytes is kept; a different file or a
symbolic link under a script's name is refused (one line, exit status 2) and nothing is written."""

from __future__ import annotations

import argparse

from bcrdist.launch.slurm_scripts import write_scripts


def add_slurm_scripts_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the scripts into (created if missing)")


def run_slurm_scripts(args: argparse.Namespace) -> int:
    written, same = write_scripts(args.out)
    kept = f"; {len(same)} already there, unchanged" if same else ""
    print(f"wrote {len(written)} sbatch script(s) to {args.out}{kept}: {', '.join(sorted(written + same))}")
    return 0
