"""Error metrics of the original (per sample) and their exact distributed means.

Targets and predictions are (B, Nt, Nr) polar images (angle, radius).
- `weighted_relative_error`: ‖(Ŷ − Y)⊙w‖ / ‖Y⊙w‖ with w_j = 2j + 1 along the radius (the original's
  metric for 'V1' data; the weight enters squared, ∝ r², i.e. the polar area element).
- `psnr`: 10·log10(pixel_max² / max(MSE, 1e-10·pixel_max²)) per sample (original pixel_max = 2 after the
  output scaling); the original minimises −PSNR.
- `relative_l2`: unweighted ‖Ŷ − Y‖ / ‖Y‖.

Model selection and the accumulators work with *selection errors*, lower is better: the relative errors as
they are and −PSNR (`per_sample_error`). `summarize` turns their statistics into the reported metrics,
where PSNR is in dB again and its worst value is called `min`.
"""

from __future__ import annotations

import numpy as np
import torch

METRICS = ("weighted", "psnr", "rel_l2")
REPORTED = ("weighted", "rel_l2", "psnr")        # the order of the metrics in results and reports
HIGHER_IS_BETTER = frozenset({"psnr"})           # selected on the negated value


def radial_weights(nr: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """w_j = 2j + 1, j = 0 … Nr − 1 (shape (Nr,))."""
    return torch.arange(1, 2 * nr + 1, 2, device=device, dtype=dtype)


def weighted_relative_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, Nt, Nr) × 2 → (B,) radius-weighted relative errors."""
    w = radial_weights(target.shape[-1], target.device, target.dtype)
    num = ((pred - target) * w).flatten(1).norm(dim=1)
    den = (target * w).flatten(1).norm(dim=1)
    return num / den.clamp_min(torch.finfo(target.dtype).tiny)


def relative_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, …) × 2 → (B,) unweighted relative L2 errors."""
    num = (pred - target).flatten(1).norm(dim=1)
    return num / target.flatten(1).norm(dim=1).clamp_min(torch.finfo(target.dtype).tiny)


def psnr(pred: torch.Tensor, target: torch.Tensor, pixel_max: float = 2.0) -> torch.Tensor:
    """(B, …) × 2 → (B,) PSNR in dB."""
    mse = (pred - target).flatten(1).pow(2).mean(dim=1)
    return -10 * torch.log10(torch.clamp(mse / pixel_max ** 2, min=1e-10))


def per_sample_error(name: str, pred: torch.Tensor, target: torch.Tensor, pixel_max: float = 2.0) -> torch.Tensor:
    """The selection error (lower is better) of metric `name`: weighted, rel_l2, or −PSNR."""
    if name == "weighted":
        return weighted_relative_error(pred, target)
    if name == "rel_l2":
        return relative_l2(pred, target)
    if name == "psnr":
        return -psnr(pred, target, pixel_max)
    raise ValueError(f"unknown metric {name!r} (expected one of {', '.join(METRICS)})")


class ErrorAccumulator:
    """Streaming per-sample statistics (sum, sum of squares, max, count) in float64.

    `reduce(ctx)` combines them across ranks (SUM for sums and counts, MAX for the max), so the means over an
    unpadded, rank-partitioned evaluation set are exact.
    """

    def __init__(self):
        self.sum = 0.0
        self.sumsq = 0.0
        self.max = -float("inf")
        self.count = 0

    def add(self, errors: torch.Tensor) -> None:
        e = errors.detach().double().cpu()
        if e.numel() == 0:
            return
        self.sum += float(e.sum())
        self.sumsq += float((e * e).sum())
        self.max = max(self.max, float(e.max()))
        self.count += e.numel()

    def reduce(self, ctx) -> dict:
        """Global {'mean', 'std', 'max', 'count'}; every rank must call it."""
        t = ctx.all_reduce_sum(torch.tensor([self.sum, self.sumsq, float(self.count)], dtype=torch.float64,
                                            device=ctx.device))
        total, sq, n = (float(v) for v in t.cpu())
        mx = ctx.all_reduce_max(self.max)
        mean = total / n if n else float("nan")
        var = max(sq / n - mean * mean, 0.0) if n else float("nan")
        return {"mean": mean, "std": var ** 0.5, "max": mx, "count": int(n)}


def sample_statistics(name: str, values) -> dict:
    """{'mean', 'std', 'max', 'count'} (float64, population std) of the selection errors of metric `name`
    given its per-sample values (N,) (PSNR in dB: negated here), the layout of `ErrorAccumulator.reduce`."""
    e = np.asarray(values, dtype=np.float64).reshape(-1)
    if name in HIGHER_IS_BETTER:
        e = -e
    if e.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "max": -float("inf"), "count": 0}
    return {"mean": float(e.mean()), "std": float(e.std()), "max": float(e.max()), "count": int(e.size)}


def summarize(stats: dict[str, dict]) -> dict:
    """Statistics of selection errors {metric: {mean, std, max, count}} → the reported metrics.

    The relative errors keep {mean, std, max, count}; psnr becomes {mean, std, min, count} in dB: the mean
    and the worst value change sign (the worst −PSNR is the smallest PSNR), the spread does not. The one
    layout of `results.json`, `bcrdist evaluate`'s metrics.json and the Born baseline.
    """
    out = {}
    for name, s in stats.items():
        if name in HIGHER_IS_BETTER:
            out[name] = {"mean": -s["mean"], "std": s["std"], "min": -s["max"], "count": s["count"]}
        else:
            out[name] = {"mean": s["mean"], "std": s["std"], "max": s["max"], "count": s["count"]}
    return out
