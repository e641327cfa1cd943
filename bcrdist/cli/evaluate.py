"""`bcrdist evaluate --checkpoint RUN/checkpoints/best.pt --data DIR [--split test] [--out DIR] [--noise PERCENT
--noise-model fan|complex|additive] [--seed N] [--max-saved N] [--allow-physics-mismatch]`: exact metrics,
predictions of every sample (or the first N) and plots of a checkpoint on a split (`bcrdist.train.evaluation`),
under the measurement noise of `bcrdist.noise` (the draw `bcrdist baseline` makes with the same seed); data of
other physics than the training data's are refused unless allowed; runs under torchrun too."""

from __future__ import annotations

import argparse

from bcrdist.errors import BcrdistError
from bcrdist.fileio import one_line
from bcrdist.noise import MAX_LEVEL, MODELS
from bcrdist.train.evaluation import evaluate_checkpoint
from bcrdist.train.physics_check import ALLOW_FLAG


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 0, got {value}")
    return value


def percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage ≥ 0, got {text!r}") from None
    if not 0 <= value <= MAX_LEVEL:
        raise argparse.ArgumentTypeError(f"expected a percentage in [0, {MAX_LEVEL:g}], got {text}")
    return value


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a bcrdist checkpoint (best.pt or last.pt)")
    p.add_argument("--data", required=True, help="data-set directory")
    p.add_argument("--split", default="test", help="split name or file ('all' for every sample)")
    p.add_argument("--out", help="output folder (default: RUN/eval-SPLIT next to the checkpoint's run)")
    p.add_argument("--noise", type=percent, default=0.0, metavar="PERCENT",
                   help="measurement noise level δ in percent (default 0)")
    p.add_argument("--noise-model", choices=MODELS, default="fan",
                   help="noise model (bcrdist.noise): fan X(1 + δε) on Re and Im parts separately (default, the "
                        "original's), complex (1 + δZ)·F, additive F + δ‖F‖/√n·Z")
    p.add_argument("--seed", type=non_negative, default=None,
                   help="seed of the noise draws (default: the run's seed, as its validation and test noise)")
    p.add_argument("--plots", type=non_negative, default=4, metavar="N", help="samples to plot (0: none)")
    p.add_argument("--max-saved", type=non_negative, default=None, metavar="N",
                   help="write only the first N samples (by index) to predictions.h5 (default: every sample); the "
                        "metrics and the error histogram always use all")
    p.add_argument(ALLOW_FLAG, action="store_true",
                   help="evaluate on data whose recorded physics (k, box, grid sizes, layout, sign) differ from "
                        "the training data's (refused otherwise); metrics.json records the differences")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run_evaluate(args: argparse.Namespace) -> int:
    try:
        evaluate_checkpoint(args.checkpoint, args.data, args.split, args.out, args.noise, args.plots,
                            args.batch_size, args.device, noise_model=args.noise_model, seed=args.seed,
                            max_saved=args.max_saved, allow_physics_mismatch=args.allow_physics_mismatch)
    except FileNotFoundError:
        raise
    except OSError as exc:
        # writing metrics.json, predictions.h5 or a plot failed (disk full, permissions): one line
        raise BcrdistError(one_line(exc)) from None
    return 0
