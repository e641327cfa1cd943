"""Error metrics of the original (per sample), the relative errors of the far-field/image comparisons, and
their exact distributed means.

Targets and predictions are (B, …) images: polar (B, Nt, Nr) (angle, radius) or Cartesian (B, n, n).
- `weighted_relative_error`: ‖(Ŷ − Y)⊙w‖ / ‖Y⊙w‖ with w_j = 2j + 1 along the radius (the original's
  metric for 'V1' data; the weight enters squared, ∝ r², i.e. the polar area element). Polar targets only.
- `psnr`: 10·log10(pixel_max² / max(MSE, 1e-10·pixel_max²)) per sample (original pixel_max = 2 after the
  output scaling); the original minimises −PSNR.
- `relative_l2`: unweighted ‖Ŷ − Y‖₂ / ‖Y‖₂; `relative_l1`: ‖Ŷ − Y‖₁ / ‖Y‖₁ (the published comparisons on
  the far-field/image layout report both).
- `masked_mse`: the MSE training loss, mean over the counted elements.
Every metric takes `mask`, a bool tensor broadcastable to the images' shape (e.g. (n, n) or (B, n, n)), True
where an element is data: elements where it is False (the zero padding of `model.pad_to`) count neither in the
error nor in the norm of the target nor in the element count of a mean.

Model selection and the accumulators work with *selection errors*, lower is better: the relative errors as
they are and −PSNR (`per_sample_error`). `summarize` turns their statistics into the reported metrics,
where PSNR is in dB again and its worst value is called `min`.
"""

from __future__ import annotations

import numpy as np
import torch

from bcrdist.errors import ConfigError

METRICS = ("weighted", "psnr", "rel_l2", "rel_l1")
REPORTED = ("weighted", "rel_l2", "psnr")        # the order of the metrics in results and reports
HIGHER_IS_BETTER = frozenset({"psnr"})           # selected on the negated value
POLAR_ONLY = frozenset({"weighted"})             # defined with the radial weight of a polar target
REPORTED_FOR = {"polar": ("weighted", "rel_l2", "rel_l1", "psnr"), "cartesian": ("rel_l2", "rel_l1", "psnr")}
SELECTION_DEFAULT = {"polar": "weighted", "cartesian": "rel_l2"}


def _counted(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x with the elements outside `mask` set to 0 (x itself without a mask)."""
    return x if mask is None else x * mask.to(device=x.device, dtype=x.dtype)


def _tiny(t: torch.Tensor) -> float:
    return torch.finfo(t.dtype).tiny


def radial_weights(nr: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """w_j = 2j + 1, j = 0 … Nr − 1 (shape (Nr,))."""
    return torch.arange(1, 2 * nr + 1, 2, device=device, dtype=dtype)


def weighted_relative_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
                            ) -> torch.Tensor:
    """(B, Nt, Nr) × 2 → (B,) radius-weighted relative errors. The weight is that of the column index of the
    arrays given, so a padded polar target keeps its data's weights when padded after the last radius only."""
    w = radial_weights(target.shape[-1], target.device, target.dtype)
    num = _counted((pred - target) * w, mask).flatten(1).norm(dim=1)
    den = _counted(target * w, mask).flatten(1).norm(dim=1)
    return num / den.clamp_min(_tiny(target))


def relative_l2(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, …) × 2 → (B,) unweighted relative L2 errors."""
    num = _counted(pred - target, mask).flatten(1).norm(dim=1)
    return num / _counted(target, mask).flatten(1).norm(dim=1).clamp_min(_tiny(target))


def relative_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, …) × 2 → (B,) relative L1 errors Σ|Ŷ − Y| / Σ|Y|."""
    num = _counted(pred - target, mask).flatten(1).abs().sum(dim=1)
    return num / _counted(target, mask).flatten(1).abs().sum(dim=1).clamp_min(_tiny(target))


def _counts(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Counted elements per sample (B,) of a mask broadcast to `like`'s shape."""
    return mask.to(device=like.device).expand(like.shape).flatten(1).sum(dim=1).to(like.dtype)


# PSNR's pixel maximum in training units: targets divided by half their range span 2 (the original's pixel_max)
PIXEL_MAX = 2.0


def psnr(pred: torch.Tensor, target: torch.Tensor, pixel_max: float = 2.0, mask: torch.Tensor | None = None
         ) -> torch.Tensor:
    """(B, …) × 2 → (B,) PSNR in dB; the MSE is the mean over the counted elements of each sample."""
    sq = (pred - target).pow(2)
    if mask is None:
        mse = sq.flatten(1).mean(dim=1)
    else:
        mse = _counted(sq, mask).flatten(1).sum(dim=1) / _counts(mask, sq).clamp_min(1)
    return -10 * torch.log10(torch.clamp(mse / pixel_max ** 2, min=1e-10))


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The MSE loss (a scalar): mean of (Ŷ − Y)² over the counted elements of the whole batch (all elements
    without a mask, as `torch.nn.functional.mse_loss`)."""
    sq = (pred - target).pow(2)
    if mask is None:
        return sq.mean()
    return _counted(sq, mask).sum() / _counts(mask, sq).sum().clamp_min(1)


def check_metrics_for_target(names, target: str, key: str = "metric") -> None:
    """ConfigError naming `key` and the metric when one of `names` does not apply to a `target` ("polar" or
    "cartesian") — the radius-weighted error on a Cartesian image — or is unknown."""
    for name in [names] if isinstance(names, str) else list(names):
        if name not in METRICS:
            raise ConfigError(f"{key}: unknown metric {name!r} (expected one of {', '.join(METRICS)})")
        if name in POLAR_ONLY and target != "polar":
            raise ConfigError(f"{key}: {name!r} (the radius-weighted error) applies to polar targets only; this "
                              f"data set's target is {target}: use one of "
                              f"{', '.join(m for m in METRICS if m not in POLAR_ONLY)}")


def per_sample_error(name: str, pred: torch.Tensor, target: torch.Tensor, pixel_max: float = 2.0,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """The selection error (lower is better) of metric `name`: weighted, rel_l2, rel_l1, or −PSNR."""
    if name == "weighted":
        return weighted_relative_error(pred, target, mask)
    if name == "rel_l2":
        return relative_l2(pred, target, mask)
    if name == "rel_l1":
        return relative_l1(pred, target, mask)
    if name == "psnr":
        return -psnr(pred, target, pixel_max, mask)
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


def summarize(stats: dict[str, dict], pixel_max: float | None = None) -> dict:
    """Statistics of selection errors {metric: {mean, std, max, count}} → the reported metrics.

    The relative errors (weighted, rel_l2, rel_l1) keep {mean, std, max, count}; psnr becomes
    {mean, std, min, count} in dB: the mean and the worst value change sign (the worst −PSNR is the smallest
    PSNR), the spread does not; given `pixel_max`, psnr also states it. The one layout of `results.json`,
    `bcrdist evaluate`'s metrics.json and the Born baseline.
    """
    out = {}
    for name, s in stats.items():
        if name in HIGHER_IS_BETTER:
            out[name] = {"mean": -s["mean"], "std": s["std"], "min": -s["max"], "count": s["count"]}
            if pixel_max is not None:
                out[name]["pixel_max"] = float(pixel_max)
        else:
            out[name] = {"mean": s["mean"], "std": s["std"], "max": s["max"], "count": s["count"]}
    return out
