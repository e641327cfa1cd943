"""The error metrics (`bcrdist.metrics`), including an exact 2-process gloo reduction, relative L1, masks that
keep padding out of every metric and the loss, and the metrics that fit a target's grid."""

from __future__ import annotations

import datetime
import json
import math
import os
import socket
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bcrdist.distributed.launch_env import LaunchEnv
from bcrdist.distributed.process_group import DistContext
from bcrdist.errors import ConfigError
from bcrdist.metrics import (REPORTED_FOR, SELECTION_DEFAULT, ErrorAccumulator, check_metrics_for_target, masked_mse,
                             per_sample_error, psnr, relative_l1, relative_l2, sample_statistics, summarize,
                             weighted_relative_error)


def np_weighted(p, y):
    nr = y.shape[-1]
    w = np.arange(nr) * 2 + 1.0
    num = np.sqrt(np.sum(((p - y) * w) ** 2, axis=(1, 2)))
    den = np.sqrt(np.sum((y * w) ** 2, axis=(1, 2)))
    return num / den


def np_psnr(p, y, pixel_max=2.0):
    mse = np.mean((p - y) ** 2, axis=tuple(range(1, y.ndim)))
    return -10 * np.log10(np.maximum(mse / pixel_max ** 2, 1e-10))


def _pair(seed, shape=(5, 8, 6)):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=shape)
    p = y + rng.normal(scale=0.1, size=shape) * rng.uniform(0.1, 2, size=(shape[0], 1, 1))
    return p, y


def test_weighted_relative_error_matches_numpy():
    p, y = _pair(0)
    got = weighted_relative_error(torch.from_numpy(p), torch.from_numpy(y))
    np.testing.assert_allclose(got.numpy(), np_weighted(p, y), rtol=1e-12)
    # the weight runs along the last (radial) axis: an error at a large radius counts more
    y1 = np.ones((1, 4, 5))
    p_inner, p_outer = y1.copy(), y1.copy()
    p_inner[0, 0, 0] += 1
    p_outer[0, 0, 4] += 1
    e_in = weighted_relative_error(torch.from_numpy(p_inner), torch.from_numpy(y1)).item()
    e_out = weighted_relative_error(torch.from_numpy(p_outer), torch.from_numpy(y1)).item()
    assert e_out / e_in == pytest.approx(9.0)              # w_4 / w_0 = 9 / 1
    f32 = weighted_relative_error(torch.from_numpy(p).float(), torch.from_numpy(y).float())
    np.testing.assert_allclose(f32.numpy(), np_weighted(p, y), rtol=1e-5)


def test_relative_l2_matches_numpy():
    p, y = _pair(1)
    want = np.linalg.norm((p - y).reshape(5, -1), axis=1) / np.linalg.norm(y.reshape(5, -1), axis=1)
    np.testing.assert_allclose(relative_l2(torch.from_numpy(p), torch.from_numpy(y)).numpy(), want, rtol=1e-12)


def test_psnr_matches_numpy_with_floor():
    p, y = _pair(2)
    p[0] = y[0]                                            # exact prediction: floor 1e-10 → 100 dB
    p[1] = y[1] + 1e-7                                     # MSE/4 = 2.5e-15 < 1e-10: also 100 dB
    got = psnr(torch.from_numpy(p), torch.from_numpy(y))
    np.testing.assert_allclose(got.numpy(), np_psnr(p, y), rtol=1e-12)
    assert got[0].item() == pytest.approx(100.0) and got[1].item() == pytest.approx(100.0)
    np.testing.assert_allclose(psnr(torch.from_numpy(p), torch.from_numpy(y), pixel_max=1.0).numpy(),
                               np_psnr(p, y, 1.0), rtol=1e-12)
    # pixel_max 2: a constant error of 0.2 → MSE 0.04 → 10·log10(4/0.04) = 20 dB
    assert psnr(torch.full((1, 3, 3), 0.2), torch.zeros(1, 3, 3)).item() == pytest.approx(20.0, rel=1e-6)


def test_per_sample_error_dispatch():
    p, y = (torch.from_numpy(a) for a in _pair(3))
    assert torch.equal(per_sample_error("weighted", p, y), weighted_relative_error(p, y))
    assert torch.equal(per_sample_error("rel_l2", p, y), relative_l2(p, y))
    np.testing.assert_allclose(per_sample_error("psnr", p, y).numpy(), -np_psnr(p.numpy(), y.numpy()), rtol=1e-12)
    with pytest.raises(ValueError, match="mse"):
        per_sample_error("mse", p, y)


def test_relative_l1_matches_numpy():
    p, y = _pair(4)
    want = np.abs(p - y).reshape(5, -1).sum(1) / np.abs(y).reshape(5, -1).sum(1)
    np.testing.assert_allclose(relative_l1(torch.from_numpy(p), torch.from_numpy(y)).numpy(), want, rtol=1e-12)
    assert torch.equal(per_sample_error("rel_l1", torch.from_numpy(p), torch.from_numpy(y)),
                       relative_l1(torch.from_numpy(p), torch.from_numpy(y)))


def _padded(a, before=3, after=5):
    """a (B, n, m) zero-padded on both image axes, as model.pad_to pads; and the mask of the data region."""
    out = np.pad(a, ((0, 0), (before, after), (before, after)))
    mask = np.zeros(out.shape[1:], dtype=bool)
    mask[before:before + a.shape[1], before:before + a.shape[2]] = True
    return out, mask


def test_masked_metrics_ignore_the_padding():
    p, y = _pair(7)
    pp, mask = _padded(p)
    yp, _ = _padded(y)
    rng = np.random.default_rng(9)
    pp[:, ~mask] = rng.normal(size=(len(pp), int((~mask).sum())))   # what a network may predict on the padding
    P, Y, Pp, Yp = (torch.from_numpy(a) for a in (p, y, pp, yp))
    M = torch.from_numpy(mask)
    for name, metric in (("rel_l2", relative_l2), ("rel_l1", relative_l1)):
        masked = metric(Pp, Yp, M)
        np.testing.assert_allclose(masked.numpy(), metric(P, Y).numpy(), rtol=1e-12)
        assert (np.abs(metric(Pp, Yp).numpy() - masked.numpy()) > 1e-3).all(), name   # the padding would count
    np.testing.assert_allclose(psnr(Pp, Yp, mask=M).numpy(), psnr(P, Y).numpy(), rtol=1e-12)
    assert (np.abs(psnr(Pp, Yp).numpy() - psnr(P, Y).numpy()) > 0.1).all()
    assert masked_mse(Pp, Yp, M).item() == pytest.approx(torch.nn.functional.mse_loss(P, Y).item(), rel=1e-12)
    assert masked_mse(Pp, Yp).item() == pytest.approx(torch.nn.functional.mse_loss(Pp, Yp).item(), rel=1e-12)
    assert masked_mse(Pp, Yp).item() != pytest.approx(masked_mse(Pp, Yp, M).item(), rel=1e-3)
    # the weighted error: its weight w_j = 2j + 1 is the padded grid's, so on a polar target padded after the last
    # radius (and anywhere along the angle) the data cells keep their weights and the value is the unpadded one
    pr = np.pad(p, ((0, 0), (2, 3), (0, 4)))
    yr = np.pad(y, ((0, 0), (2, 3), (0, 4)))
    mr = np.zeros(pr.shape[1:], dtype=bool)
    mr[2:2 + p.shape[1], :p.shape[2]] = True
    pr[:, ~mr] = 1.0
    Pr, Yr, Mr = (torch.from_numpy(a) for a in (pr, yr, mr))
    np.testing.assert_allclose(weighted_relative_error(Pr, Yr, Mr).numpy(), weighted_relative_error(P, Y).numpy(),
                               rtol=1e-12)
    assert (np.abs(weighted_relative_error(Pr, Yr).numpy() - weighted_relative_error(P, Y).numpy()) > 1e-3).all()
    # a per-sample mask (B, n, m) and the mask through per_sample_error
    Mb = M.expand(len(pp), *mask.shape).clone()
    np.testing.assert_allclose(per_sample_error("rel_l1", Pp, Yp, mask=Mb).numpy(), relative_l1(P, Y).numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(per_sample_error("psnr", Pp, Yp, mask=Mb).numpy(), -psnr(P, Y).numpy(), rtol=1e-12)
    # masked_mse is a loss: its gradient vanishes on the padding
    Pg = Pp.clone().requires_grad_(True)
    masked_mse(Pg, Yp, M).backward()
    assert torch.all(Pg.grad[:, ~M] == 0) and torch.all(Pg.grad[:, M] != 0)


def test_metrics_fit_the_target():
    check_metrics_for_target(["weighted", "rel_l2", "rel_l1", "psnr"], "polar")
    check_metrics_for_target(REPORTED_FOR["cartesian"], "cartesian")
    with pytest.raises(ConfigError) as info:
        check_metrics_for_target("weighted", "cartesian", key="train.metric")
    msg = str(info.value)
    assert msg.startswith("train.metric: 'weighted'") and "polar targets only" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="metrics: unknown metric 'mse'"):
        check_metrics_for_target(["rel_l2", "mse"], "polar", key="metrics")
    assert SELECTION_DEFAULT == {"polar": "weighted", "cartesian": "rel_l2"}
    assert "weighted" not in REPORTED_FOR["cartesian"] and "rel_l1" in REPORTED_FOR["polar"]


def test_summary_states_pixel_max_and_includes_rel_l1():
    p, y = (torch.from_numpy(a) for a in _pair(10))
    stats = {name: sample_statistics(name, (psnr(p, y, 2.0) if name == "psnr" else per_sample_error(name, p, y))
                                     .numpy()) for name in ("rel_l2", "rel_l1", "psnr")}
    out = summarize(stats, pixel_max=2.0)
    assert out["psnr"]["pixel_max"] == 2.0 and set(out["rel_l1"]) == {"mean", "std", "max", "count"}
    assert out["rel_l1"]["mean"] == pytest.approx(relative_l1(p, y).numpy().mean(), rel=1e-12)
    assert "pixel_max" not in summarize(stats)["psnr"]           # existing callers: the layout they had


class FakeCtx:
    device = "cpu"

    def all_reduce_sum(self, t):
        return t.clone()

    def all_reduce_max(self, v):
        return float(v)


def test_error_accumulator_matches_numpy():
    rng = np.random.default_rng(5)
    chunks = [rng.normal(3.0, 1.5, size=n) for n in (7, 1, 0, 13, 4)]
    acc = ErrorAccumulator()
    for c in chunks:
        acc.add(torch.from_numpy(c).float())
    acc.add(torch.tensor([]))
    allv = np.concatenate([c.astype(np.float32).astype(np.float64) for c in chunks])
    r = acc.reduce(FakeCtx())
    assert r["count"] == allv.size == 25
    assert r["mean"] == pytest.approx(allv.mean(), rel=1e-12)
    assert r["std"] == pytest.approx(allv.std(), rel=1e-9)
    assert r["max"] == allv.max()
    empty = ErrorAccumulator().reduce(FakeCtx())
    assert empty["count"] == 0 and math.isnan(empty["mean"])


# ------------------------------------------------------------------------------------ summaries
def test_summarize_reports_psnr_in_db_with_its_worst_value_as_min():
    p, y = (torch.from_numpy(a) for a in _pair(6))
    stats = {}
    for name in ("weighted", "rel_l2", "psnr"):
        acc = ErrorAccumulator()
        acc.add(per_sample_error(name, p, y))
        stats[name] = acc.reduce(FakeCtx())
    out = summarize(stats)
    db = np_psnr(p.numpy(), y.numpy())
    assert set(out["psnr"]) == {"mean", "std", "min", "count"}
    assert out["psnr"]["mean"] == pytest.approx(db.mean(), rel=1e-12)
    assert out["psnr"]["min"] == pytest.approx(db.min(), rel=1e-12)
    assert out["psnr"]["std"] == pytest.approx(db.std(), rel=1e-6) and out["psnr"]["count"] == 5
    w = np_weighted(p.numpy(), y.numpy())
    assert set(out["weighted"]) == set(out["rel_l2"]) == {"mean", "std", "max", "count"}
    assert out["weighted"]["mean"] == pytest.approx(w.mean(), rel=1e-12)
    assert out["weighted"]["max"] == pytest.approx(w.max(), rel=1e-12)


def test_sample_statistics_match_the_accumulator_layout():
    rng = np.random.default_rng(8)
    db = rng.uniform(10, 40, size=17)
    s = sample_statistics("psnr", db)
    assert s == {"mean": -db.mean(), "std": db.std(), "max": -db.min(), "count": 17}
    assert summarize({"psnr": s})["psnr"] == {"mean": db.mean(), "std": db.std(), "min": db.min(), "count": 17}
    e = rng.uniform(0, 1, size=9)
    assert sample_statistics("weighted", e) == {"mean": e.mean(), "std": e.std(), "max": e.max(), "count": 9}
    acc = ErrorAccumulator()
    acc.add(torch.from_numpy(e))
    r = acc.reduce(FakeCtx())
    assert r.keys() == sample_statistics("weighted", e).keys()
    assert sample_statistics("weighted", [])["count"] == 0


# ---------------------------------------------------------------------- 2-process gloo reduction
RANK_DATA = {0: [[0.5, 1.25, 3.0], [2.0]], 1: [[0.1, 7.5], [0.2, 0.3, 0.4, 0.6, 0.7]]}   # 4 vs 7 samples
RANK_DATA_B = {0: [], 1: [[-3.0, -1.0, -2.0]]}                                          # rank 0 has none


def _gloo_worker(rank, world, port, outdir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    try:
        ctx = DistContext(LaunchEnv("torchrun", rank, world, rank, "127.0.0.1", port), torch.device("cpu"),
                          "gloo")
        out = {}
        for name, data in (("a", RANK_DATA), ("b", RANK_DATA_B)):
            acc = ErrorAccumulator()
            for chunk in data[rank]:
                acc.add(torch.tensor(chunk, dtype=torch.float64))
            out[name] = acc.reduce(ctx)
        with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_error_accumulator_gloo_two_processes(tmp_path):
    # fork: the children inherit the imported modules (spawn would re-import torch: ~15 s on 2 cores)
    pc = mp.start_processes(_gloo_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False,
                            start_method="fork")
    deadline = time.time() + 60
    while not pc.join(timeout=1):
        if time.time() > deadline:
            for p in pc.processes:
                p.kill()
            pytest.fail("gloo workers did not finish in 60 s")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]
    for name, data in (("a", RANK_DATA), ("b", RANK_DATA_B)):
        allv = np.array([v for r in range(2) for chunk in data[r] for v in chunk])
        got = results[0][name]
        assert got["count"] == allv.size
        assert got["mean"] == pytest.approx(allv.mean(), rel=1e-14)   # not the mean of rank means
        assert got["std"] == pytest.approx(allv.std(), rel=1e-12)
        assert got["max"] == allv.max()
    assert results[0]["a"]["mean"] != pytest.approx(np.mean([np.mean(sum(RANK_DATA[r], [])) for r in range(2)]))
