"""`bcrdist evaluate --checkpoint RUN/checkpoints/best.pt --data DIR [--split test] [--out DIR]`: exact
metrics, predictions and plots of a checkpoint on a split (`bcrdist.train.evaluation`); runs under torchrun
too."""

from __future__ import annotations

import argparse

from bcrdist.errors import BcrdistError
from bcrdist.fileio import one_line
from bcrdist.train.evaluation import evaluate_checkpoint


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 0, got {value}")
    return value


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a bcrdist checkpoint (best.pt or last.pt)")
    p.add_argument("--data", required=True, help="data-set directory")
    p.add_argument("--split", default="test", help="split name or file ('all' for every sample)")
    p.add_argument("--out", help="output folder (default: RUN/eval-SPLIT next to the checkpoint's run)")
    p.add_argument("--noise", type=float, default=0.0, help="multiplicative input noise in percent")
    p.add_argument("--plots", type=non_negative, default=4, metavar="N", help="samples to plot (0: none)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run_evaluate(args: argparse.Namespace) -> int:
    try:
        evaluate_checkpoint(args.checkpoint, args.data, args.split, args.out, args.noise, args.plots,
                            args.batch_size, args.device)
    except FileNotFoundError:
        raise
    except OSError as exc:
        # writing metrics.json, predictions.h5 or a plot failed (disk full, permissions): one line
        raise BcrdistError(one_line(exc)) from None
    return 0
