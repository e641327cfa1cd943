"""Paired statistics: does one method beat another on the same test samples (issue 20's "beats Born"), per
training seed and over seeds, and a metric's mean ± standard deviation over seeds.

A method's per-sample errors are the "samples" record `bcrdist evaluate` (metrics.json) and `bcrdist
baseline` write: {"index": [global sample indices], metric: [value per sample], …}, PSNR in dB (higher is
better), the relative errors as they are. Two methods are paired on the global sample index, never on the
position in the lists, and only when they scored exactly the same samples.

The test is the Wilcoxon signed-rank test of the differences d_i = e₁,i − e₂,i of the selection errors (lower
is better: PSNR negated), two-sided, at level 0.05 by default (`scipy.stats.wilcoxon`). Zero differences are
dropped (Wilcoxon's own rule); the p-value is exact for up to `EXACT_MAX` non-zero differences without ties
among |d|, otherwise the normal approximation with the tie-corrected variance, without continuity correction.
It assumes independent samples and a null distribution of d symmetric about 0, not normality: relative
errors are heavy-tailed (a few failed reconstructions), which would inflate a paired t-test's standard error
and hide a difference that holds on nearly every sample. Its direction is its own statistic's: R₋ (the rank
sum of |d| where the first method's error is the lower) against R₊. Verdict: "yes" (the first method is
better) when p < level and R₋ > R₊, "no" when p < level and R₊ > R₋, "tie" otherwise. The mean difference
e₁ − e₂ (in the metric's reported units: PSNR in dB, positive when the first is better) and its standard
error s_d / √n are reported beside it.

Over seeds (`compare_seeds`), each seed's pair is tested on its own and the overall verdict is the
intersection–union rule: "yes" only when every seed says yes, "no" only when every seed says no, "tie"
otherwise. "yes" then claims, at the level of one test and without a multiplicity correction, that the first
method beats the second for every trained seed (Berger 1982, intersection–union tests): a method that wins
only for lucky seeds is not said to win.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from bcrdist.errors import ConfigError, DataError
from bcrdist.metrics import HIGHER_IS_BETTER

LEVEL = 0.05
EXACT_MAX = 50          # non-zero differences up to which the p-value is exact (without ties)
SHOWN = 5               # sample indices a refusal quotes


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One paired comparison of a first and a second method on `n` samples.

    mean_difference: mean of e₁ − e₂ in the metric's reported units (PSNR in dB); standard_error: its sample
    standard deviation / √n (NaN for one sample); median_difference: the median of e₁ − e₂; n_nonzero: the
    differences the test ranks; r_minus / r_plus: the rank sums of |d| where the first method's selection
    error is lower / higher; p_value: the two-sided Wilcoxon signed-rank p-value (1 when every difference is
    0); verdict: "yes" (first better), "tie", "no"."""
    metric: str
    n: int
    mean_difference: float
    standard_error: float
    median_difference: float
    n_nonzero: int
    r_minus: float
    r_plus: float
    p_value: float
    level: float
    verdict: str

    def record(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SeedsComparison:
    """Per-seed comparisons {seed: Comparison} and the overall intersection–union verdict."""
    per_seed: dict
    verdict: str

    def record(self) -> dict:
        return {"per_seed": {str(s): c.record() for s, c in self.per_seed.items()}, "verdict": self.verdict,
                "rule": "intersection-union: yes (no) only when every seed says yes (no), else tie"}


def _shown(indices: np.ndarray) -> str:
    text = ", ".join(str(int(i)) for i in indices[:SHOWN])
    return text + (f", … ({len(indices)} samples)" if len(indices) > SHOWN else "")


def _series(samples: Mapping, metric: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(index (N,) int64, values (N,) float64) of one method's "samples" record, sorted by index; DataError
    for a missing metric, unequal lengths, a repeated index or a non-finite value."""
    if "index" not in samples or metric not in samples:
        missing = "index" if "index" not in samples else metric
        raise DataError(f"{name}: no per-sample {missing!r} in its samples (it has "
                        f"{', '.join(map(str, samples)) or 'nothing'})")
    index = np.asarray(samples["index"], dtype=np.int64).reshape(-1)
    values = np.asarray(samples[metric], dtype=np.float64).reshape(-1)
    if len(index) != len(values):
        raise DataError(f"{name}: {len(index)} sample indices but {len(values)} {metric} values")
    order = np.argsort(index, kind="stable")
    index, values = index[order], values[order]
    repeated = np.unique(index[1:][index[1:] == index[:-1]])
    if len(repeated):
        raise DataError(f"{name}: samples {_shown(repeated)} appear more than once")
    bad = index[~np.isfinite(values)]
    if len(bad):
        raise DataError(f"{name}: non-finite {metric} of samples {_shown(bad)}")
    return index, values


def paired_values(first: Mapping, second: Mapping, metric: str, names: Sequence[str] = ("first", "second")
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index (N,), first's values (N,), second's values (N,)) of `metric`, joined on the sample index and in
    index order, in the reported units. DataError, one line, when the two index sets differ."""
    (i1, v1), (i2, v2) = _series(first, metric, names[0]), _series(second, metric, names[1])
    if not np.array_equal(i1, i2):
        only1, only2 = np.setdiff1d(i1, i2), np.setdiff1d(i2, i1)
        parts = [f"{len(only)} only in {name} ({_shown(only)})" for only, name in ((only1, names[0]),
                                                                                 (only2, names[1])) if len(only)]
        raise DataError(f"paired comparison of {metric}: {names[0]} and {names[1]} scored different samples: "
                        f"{'; '.join(parts)}; score both on the same split")
    if not len(i1):
        raise DataError(f"paired comparison of {metric}: no samples")
    return i1, v1, v2


def compare_values(first: np.ndarray, second: np.ndarray, metric: str, level: float = LEVEL) -> Comparison:
    """The Wilcoxon signed-rank comparison of two methods' values (N,) of `metric` on the same N samples, in
    the same order (see the module docstring)."""
    if not 0 < level < 1:
        raise ConfigError(f"paired comparison: the level must be in (0, 1), got {level}")
    first, second = np.asarray(first, dtype=np.float64).reshape(-1), np.asarray(second, dtype=np.float64).reshape(-1)
    if len(first) != len(second) or not len(first):
        raise DataError(f"paired comparison of {metric}: {len(first)} and {len(second)} values; expected the same "
                        f"samples, at least one")
    diff = first - second
    # selection errors, lower is better: a higher PSNR is a lower error
    d = -diff if metric in HIGHER_IS_BETTER else diff
    nonzero = d[d != 0]
    ranks = stats.rankdata(np.abs(nonzero))
    r_minus, r_plus = float(ranks[nonzero < 0].sum()), float(ranks[nonzero > 0].sum())
    if len(nonzero):
        exact = len(nonzero) <= EXACT_MAX and len(np.unique(np.abs(nonzero))) == len(nonzero)
        p = float(stats.wilcoxon(nonzero, alternative="two-sided", method="exact" if exact else "approx",
                                 correction=False).pvalue)
    else:
        p = 1.0
    verdict = "tie" if not p < level else ("yes" if r_minus > r_plus else "no")
    n = len(d)
    se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return Comparison(metric=metric, n=n, mean_difference=float(diff.mean()), standard_error=se,
                      median_difference=float(np.median(diff)), n_nonzero=len(nonzero), r_minus=r_minus,
                      r_plus=r_plus, p_value=p, level=float(level), verdict=verdict)


def compare(first: Mapping, second: Mapping, metric: str, level: float = LEVEL,
            names: Sequence[str] = ("first", "second")) -> Comparison:
    """Does the first method beat the second on `metric`? Both are "samples" records ({"index": […], metric:
    […]}) of the same samples, in any order; `names` name them in refusals."""
    _, v1, v2 = paired_values(first, second, metric, names)
    return compare_values(v1, v2, metric, level)


def overall_verdict(verdicts: Sequence[str]) -> str:
    """The intersection–union verdict of per-seed verdicts: "yes" / "no" when all are, "tie" otherwise."""
    if not verdicts:
        raise DataError("paired comparison over seeds: no seeds")
    return verdicts[0] if len(set(verdicts)) == 1 else "tie"


def compare_seeds(pairs: Mapping, metric: str, level: float = LEVEL, names: Sequence[str] = ("first", "second")
                  ) -> SeedsComparison:
    """{seed: (first's samples, second's samples)} → each seed's `compare` and the overall verdict (the
    intersection–union rule of the module docstring). The second method may be the same record for every seed
    (a baseline that no seed changes)."""
    per_seed = {seed: compare(a, b, metric, level, (f"{names[0]} (seed {seed})", f"{names[1]} (seed {seed})"))
                for seed, (a, b) in pairs.items()}
    return SeedsComparison(per_seed=per_seed, verdict=overall_verdict([c.verdict for c in per_seed.values()]))


def over_seeds(values: Sequence[float]) -> dict:
    """{mean, std, count} of one metric's per-seed values (e.g. each seed's mean rel_l2): std is the sample
    standard deviation (n − 1: the spread another seed would show), NaN for a single seed."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not len(v):
        raise DataError("mean over seeds: no seeds")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
            "count": int(len(v))}
