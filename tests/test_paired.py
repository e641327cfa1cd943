"""Paired statistics (`bcrdist.paired`): the Wilcoxon signed-rank test against its definition (exact: every
sign assignment enumerated; large samples: the normal approximation written out), pairing on the sample index
not the position, refusals of samples that do not pair, the verdicts, the intersection–union rule over seeds
and the mean ± standard deviation over seeds."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from bcrdist.errors import ConfigError, DataError
from bcrdist.paired import compare, compare_seeds, compare_values, over_seeds, overall_verdict, paired_values


def samples(index, values, metric="rel_l2") -> dict:
    return {"index": list(index), metric: list(values)}


def exact_two_sided_p(ranks: list[int], r_plus: float) -> float:
    """P(min(T, S − T) ≤ min(R₊, R₋)) under the null (each rank's sign + or − with probability ½), by
    enumerating every sign assignment: the definition of the exact two-sided signed-rank p-value."""
    total = sum(ranks)
    w = min(r_plus, total - r_plus)
    hits = sum(1 for signs in itertools.product((0, 1), repeat=len(ranks))
               if min(t := sum(r for r, s in zip(ranks, signs) if s), total - t) <= w)
    return hits / 2 ** len(ranks)


def test_exact_p_value_and_rank_sums_by_hand():
    # differences first − second: seven negative (first better), one positive of the second-smallest size
    d = np.array([-0.8, -0.7, -0.6, -0.5, -0.4, -0.3, 0.2, -0.1])
    second = np.full(8, 1.0)
    first = second + d
    got = compare_values(first, second, "rel_l2")
    # |d| ranks: 0.1 → 1, 0.2 → 2, …, 0.8 → 8; the only positive difference has rank 2
    assert (got.r_plus, got.r_minus, got.n_nonzero, got.n) == (2.0, 34.0, 8, 8)
    # subsets of {1..8} with sum ≤ 2: {}, {1}, {2} → P(T ≤ 2) = 3/256, two-sided 6/256
    assert exact_two_sided_p(list(range(1, 9)), 2.0) == pytest.approx(6 / 256)
    assert got.p_value == pytest.approx(6 / 256, rel=1e-12)
    assert got.p_value == pytest.approx(stats.wilcoxon(first - second, method="exact").pvalue, rel=1e-12)
    assert got.verdict == "yes"
    diff = first - second
    assert got.mean_difference == pytest.approx(diff.sum() / 8)
    sd = math.sqrt(((diff - diff.mean()) ** 2).sum() / 7)
    assert got.standard_error == pytest.approx(sd / math.sqrt(8))
    assert got.median_difference == pytest.approx((-0.5 - 0.4) / 2)
    # six samples with the same pattern: p = 6/64 > 0.05, a tie
    six = compare_values(second[:6] + np.array([-0.6, -0.5, -0.4, -0.3, 0.2, -0.1]), second[:6], "rel_l2")
    assert six.p_value == pytest.approx(exact_two_sided_p(list(range(1, 7)), 2.0)) == pytest.approx(6 / 64)
    assert six.verdict == "tie"


def test_normal_approximation_beyond_the_exact_range_by_hand():
    rng = np.random.default_rng(5)
    n = 80
    second = rng.uniform(0.2, 0.4, n)
    d = rng.standard_normal(n) * 0.01 - 0.002
    got = compare_values(second + d, second, "rel_l2")
    ranks = np.argsort(np.argsort(np.abs(d))) + 1            # no ties among continuous draws
    t = ranks[d > 0].sum()
    z = (t - n * (n + 1) / 4) / math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    assert got.r_plus == t and got.r_minus == n * (n + 1) / 2 - t
    assert got.p_value == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)    # 2·Φ(−|z|)


def test_zero_differences_are_dropped_and_all_zero_is_a_tie():
    e = np.array([0.3, 0.2, 0.5])
    same = compare_values(e, e, "rel_l2")
    assert (same.p_value, same.verdict, same.n_nonzero, same.mean_difference) == (1.0, "tie", 0, 0.0)
    first = np.concatenate([e, np.full(8, 0.5) - np.arange(1, 9) * 0.01])
    second = np.concatenate([e, np.full(8, 0.5)])
    got = compare_values(first, second, "rel_l2")
    assert got.n == 11 and got.n_nonzero == 8 and got.p_value == pytest.approx(2 / 256)


def test_verdicts_on_constructed_data():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.5, 200)
    better = base * (1 - rng.uniform(0.05, 0.2, 200))
    assert compare_values(better, base, "rel_l2").verdict == "yes"
    assert compare_values(base, better, "rel_l2").verdict == "no"
    noise = rng.standard_normal(200) * 0.01
    symmetric = compare_values(base + noise, base - noise, "rel_l2")
    assert symmetric.verdict == "tie" and symmetric.p_value > 0.05
    # PSNR: higher is better, so a higher first PSNR is a "yes" and its mean difference is positive
    psnr = compare_values(20 + 10 * base, 18 + 10 * base, "psnr")
    assert psnr.verdict == "yes" and psnr.mean_difference == pytest.approx(2.0)
    assert compare_values(18 + 10 * base, 20 + 10 * base, "psnr").verdict == "no"
    # a heavy-tailed failure of the better method does not hide its consistent advantage
    tail = better.copy()
    tail[0] = 50.0
    heavy = compare_values(tail, base, "rel_l2")
    assert heavy.mean_difference > 0 and heavy.verdict == "yes"
    with pytest.raises(ConfigError, match=r"^paired comparison: the level must be in \(0, 1\), got 1.5$"):
        compare_values(better, base, "rel_l2", level=1.5)


def test_pairing_is_on_the_index_not_the_position():
    rng = np.random.default_rng(1)
    index = np.arange(100, 160)
    a, b = rng.uniform(0.1, 0.3, 60), rng.uniform(0.1, 0.3, 60) + 0.01
    ordered = compare(samples(index, a), samples(index, b), "rel_l2")
    p, q = rng.permutation(60), rng.permutation(60)
    shuffled = compare(samples(index[p], a[p]), samples(index[q], b[q]), "rel_l2")
    assert shuffled == ordered
    joined, va, vb = paired_values(samples(index[p], a[p]), samples(index[q], b[q]), "rel_l2")
    assert joined.tolist() == index.tolist() and va.tolist() == a.tolist() and vb.tolist() == b.tolist()
    # positions paired instead of indices would give another answer
    assert compare_values(a[p], b[q], "rel_l2") != ordered


def test_samples_that_do_not_pair_are_refused_in_one_line():
    a = samples([0, 1, 2, 3, 4], [0.1] * 5)
    with pytest.raises(DataError, match=r"^paired comparison of rel_l2: bcrnet and born scored different samples: "
                                        r"1 only in bcrnet \(4\); 2 only in born \(7, 9\); score both on the same "
                                        r"split$"):
        compare(a, samples([0, 1, 2, 3, 7, 9], [0.2] * 6), "rel_l2", names=("bcrnet", "born"))
    with pytest.raises(DataError, match=r"^first: samples 2 appear more than once$"):
        compare(samples([0, 2, 2], [0.1] * 3), a, "rel_l2")
    with pytest.raises(DataError, match=r"^second: no per-sample 'psnr' in its samples \(it has index, rel_l2\)$"):
        compare(samples([0], [0.1], "psnr"), a, "psnr")
    with pytest.raises(DataError, match=r"^first: 2 sample indices but 3 rel_l2 values$"):
        compare({"index": [0, 1], "rel_l2": [0.1, 0.2, 0.3]}, a, "rel_l2")
    with pytest.raises(DataError, match=r"^first: non-finite rel_l2 of samples 1$"):
        compare(samples([0, 1, 2, 3, 4], [0.1, float("nan"), 0.1, 0.1, 0.1]), a, "rel_l2")
    with pytest.raises(DataError, match=r"^paired comparison of rel_l2: no samples$"):
        compare(samples([], []), samples([], []), "rel_l2")


def test_seeds_combine_by_the_intersection_union_rule():
    rng = np.random.default_rng(2)
    index = np.arange(120)
    born = samples(index, rng.uniform(0.3, 0.6, 120))
    base = np.asarray(born["rel_l2"])

    def net(factor):
        return samples(index, base * factor * (1 + 0.01 * rng.standard_normal(120)))

    all_better = compare_seeds({1: (net(0.8), born), 2: (net(0.7), born), 3: (net(0.9), born)}, "rel_l2")
    assert [c.verdict for c in all_better.per_seed.values()] == ["yes"] * 3 and all_better.verdict == "yes"
    one_tie = compare_seeds({1: (net(0.8), born), 2: (net(1.0), born)}, "rel_l2")
    assert [c.verdict for c in one_tie.per_seed.values()] == ["yes", "tie"] and one_tie.verdict == "tie"
    all_worse = compare_seeds({0: (net(1.2), born), 5: (net(1.3), born)}, "rel_l2")
    assert all_worse.verdict == "no"
    assert overall_verdict(["yes", "no"]) == "tie"
    record = all_better.record()
    assert set(record["per_seed"]) == {"1", "2", "3"} and record["verdict"] == "yes"
    assert record["per_seed"]["1"]["verdict"] == "yes" and record["per_seed"]["1"]["n"] == 120
    with pytest.raises(DataError, match=r"^paired comparison over seeds: no seeds$"):
        compare_seeds({}, "rel_l2")
    # a seed whose samples differ from the baseline's is named
    with pytest.raises(DataError, match=r"^paired comparison of rel_l2: net \(seed 2\) and born \(seed 2\) scored"):
        compare_seeds({1: (net(0.8), born), 2: (samples(index[:-1], base[:-1]), born)}, "rel_l2",
                      names=("net", "born"))


def test_mean_and_standard_deviation_over_seeds():
    got = over_seeds([0.10, 0.12, 0.14])
    assert got["mean"] == pytest.approx(0.12) and got["count"] == 3
    assert got["std"] == pytest.approx(math.sqrt((0.02 ** 2 + 0 + 0.02 ** 2) / 2))      # n − 1
    single = over_seeds([0.3])
    assert single["mean"] == 0.3 and math.isnan(single["std"]) and single["count"] == 1
    with pytest.raises(DataError, match=r"^mean over seeds: no seeds$"):
        over_seeds([])
