"""The one evaluation loop (`bcrdist.train.evaluation.evaluate_model`), checked against NumPy, and its
refusal of non-finite errors (naming the samples, data or model at fault); `bcrdist evaluate` writes every
sample (or the first --max-saved, saying so) in the same order for any number of ranks, and its histogram
counts every sample (its mean is the printed one); metrics.json holds every sample's errors of every metric by
global index, reproducibly under noise."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from bcrdist.cli.main import main
from bcrdist.data.format import read_manifest
from bcrdist.data.splits import load_split, write_splits
from bcrdist.distributed.launch_env import LaunchEnv
from bcrdist.distributed.process_group import DistContext
from bcrdist.errors import DataError
from bcrdist.train import plots
from bcrdist.train.evaluation import (KeptSamples, NonFiniteSamples, check_finite, evaluate_model, merged,
                                      sample_list)
from prediction_helpers import model_of, save_checkpoint, write_dataset
from train_helpers import one_process


class TwoHeads(nn.Module):
    """x (B, 4, 3) → out = x @ W (B, 4, 2), aux = 2·out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(torch.randn(3, 2))

    def forward(self, x, return_aux=False):
        out = x @ self.w
        return (out, 2 * out) if return_aux else out


def np_weighted(p, y):
    w = np.arange(y.shape[-1]) * 2 + 1.0
    return np.sqrt((((p - y) * w) ** 2).sum(axis=(1, 2))) / np.sqrt(((y * w) ** 2).sum(axis=(1, 2)))


def test_evaluate_model_matches_numpy_for_both_heads_and_restores_the_mode():
    ctx = DistContext(LaunchEnv("single", 0, 1, 0, "127.0.0.1", 0), torch.device("cpu"))
    model = TwoHeads()
    rng = np.random.default_rng(1)
    batches = [(torch.from_numpy(rng.standard_normal((n, 4, 3))).float(),
                torch.from_numpy(rng.standard_normal((n, 4, 2))).float(), torch.arange(n) + 10 * i)
               for i, n in enumerate((5, 3, 1))]
    seen = []

    def on_batch(x, y, pred, errors, index):
        seen.append((index.tolist(), pred.shape, errors["weighted"].shape))

    model.train()
    stats = evaluate_model(model, iter(batches), ctx, ("weighted", "psnr"), heads=("out", "aux"), on_batch=on_batch)
    assert model.training
    assert seen == [(list(range(5)), (5, 4, 2), (5,)), ([10, 11, 12], (3, 4, 2), (3,)), ([20], (1, 4, 2), (1,))]
    x = np.concatenate([b[0].numpy() for b in batches]).astype(np.float64)
    y = np.concatenate([b[1].numpy() for b in batches]).astype(np.float64)
    out = x @ model.w.detach().double().numpy()
    for head, pred in (("out", out), ("aux", 2 * out)):
        e = np_weighted(pred, y)
        got = stats[head]["weighted"]
        assert got["count"] == 9
        assert got["mean"] == pytest.approx(e.mean(), rel=1e-5) and got["max"] == pytest.approx(e.max(), rel=1e-5)
        db = -10 * np.log10(np.maximum(((pred - y) ** 2).mean(axis=(1, 2)) / 4, 1e-10))
        assert stats[head]["psnr"]["mean"] == pytest.approx(-db.mean(), rel=1e-5)   # selection error: −PSNR
    only_out = evaluate_model(model, iter(batches), ctx, ("weighted",))
    assert set(only_out) == {"out"} and only_out["out"]["weighted"] == stats["out"]["weighted"]



def nan_batches():
    """Three batches (x (B, 4, 3), y (B, 4, 2), index): sample 11 has a NaN input, sample 20 a NaN target."""
    rng = np.random.default_rng(2)
    batches = []
    for i, n in enumerate((5, 3, 1)):
        x = torch.from_numpy(rng.standard_normal((n, 4, 3))).float()
        y = torch.from_numpy(rng.standard_normal((n, 4, 2))).float()
        batches.append((x, y, torch.arange(n) + 10 * i))
    batches[1][0][1, 0, 0] = float("nan")
    batches[2][1][0, 3, 1] = float("nan")
    return batches


def test_non_finite_data_are_named_not_reported_as_a_metric():
    ctx, bad = one_process(), NonFiniteSamples()
    stats = evaluate_model(TwoHeads(), iter(nan_batches()), ctx, ("weighted",), on_batch=bad)
    assert bad.found() == ([11, 20], [])
    with pytest.raises(DataError, match=r"^DATA: test split: non-finite values in the inputs or targets of samples "
                                        r"11, 20; `bcrdist verify` checks a data set$"):
        check_finite(stats, bad, ctx, "DATA: test split")
    clean = [b for i, b in enumerate(nan_batches()) if i == 0]
    check_finite(evaluate_model(TwoHeads(), iter(clean), ctx, ("weighted",), on_batch=NonFiniteSamples()),
                 NonFiniteSamples(), ctx, "never raised")


def test_non_finite_predictions_of_finite_data_are_the_models_fault():
    ctx, bad, model = one_process(), NonFiniteSamples(), TwoHeads()
    with torch.no_grad():
        model.w[0, 0] = float("inf")
    batches = [b for i, b in enumerate(nan_batches()) if i == 0]
    stats = evaluate_model(model, iter(batches), ctx, ("weighted", "rel_l2"), on_batch=bad)
    with pytest.raises(ValueError, match=r"^V: the model's predictions are not finite for samples 0, 1, 2, 3, 4 "
                                         r"\(the data are finite\); tail$"):
        check_finite(stats, bad, ctx, "V", model_error=ValueError, after="; tail")


def test_sample_lists_are_short():
    assert sample_list([3, 17]) == "3, 17"
    assert sample_list(range(20)) == "0, 1, 2, 3, 4, 5, 6, 7, … (20 samples)"


def kept_parts(batches, limit, world: int) -> list:
    """`KeptSamples.local()` of each of `world` ranks that took turns with `batches` (x, y, index)."""
    parts = []
    for rank in range(world):
        keep = KeptSamples("rel_l2", limit)
        for i, (x, y, index) in enumerate(batches):
            if i % world == rank:
                keep(x, y, 2 * y, {"rel_l2": index.float() / 10, "psnr": -index.float()}, index)
        parts.append(keep.local())
    return parts


@pytest.mark.parametrize("limit", [None, 4])
def test_the_saved_samples_and_the_histogram_do_not_depend_on_the_number_of_ranks(limit):
    rng = np.random.default_rng(3)
    batches = [(torch.from_numpy(rng.standard_normal((3, 4, 3))).float(),
                torch.from_numpy(rng.standard_normal((3, 4, 2))).float(), torch.arange(3) + 3 * i) for i in range(5)]
    one = merged(kept_parts(batches, limit, 1), limit)
    for world in (2, 3, 6):                                                   # 6: a rank without samples
        kept, every = merged(kept_parts(batches, limit, world), limit)
        assert kept.keys() == one[0].keys() and all(np.array_equal(kept[k], one[0][k]) for k in kept)
        assert every.keys() == one[1].keys() and all(np.array_equal(every[k], one[1][k]) for k in every)
    kept, every = one
    assert kept["index"].tolist() == list(range(15 if limit is None else limit))
    assert every["index"].tolist() == list(range(15))                        # every sample, in index order
    np.testing.assert_allclose(every["rel_l2"], np.arange(15) / 10, rtol=1e-6)
    np.testing.assert_array_equal(every["psnr"], -np.arange(15))              # every metric's errors
    np.testing.assert_array_equal(kept["pred"], 2 * kept["target"])


def test_evaluate_saves_every_sample_and_the_histogram_mean_is_the_printed_mean(tmp_path, capsys, monkeypatch):
    """More than the 100 samples evaluate used to keep: all are written, unless --max-saved says otherwise (and
    then the output says so), and the histogram always counts every sample."""
    data = write_dataset(tmp_path / "data", "measure", n=130)
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", model_of("bcrnet-measure"), data)
    histograms = []
    draw = plots.histogram_figure

    def recorded(errors, label, title=None):
        fig = draw(errors, label, title)
        ax = fig.axes[0]
        histograms.append((len(errors), ax.get_legend().get_texts()[0].get_text(), ax.get_xlabel(), title))
        return fig

    monkeypatch.setattr(plots, "histogram_figure", recorded)
    for max_saved in (None, 7):
        out = tmp_path / f"eval-{max_saved}"
        extra = [] if max_saved is None else ["--max-saved", str(max_saved)]
        assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--split", "all", "--out", str(out),
                     "--plots", "1", *extra]) == 0
        printed = capsys.readouterr().out
        mean = re.search(r"radius-weighted relative error (\d+\.\d{4})", printed).group(1)
        saved = 130 if max_saved is None else max_saved
        with h5py.File(out / "predictions.h5", "r") as fh:
            assert fh["pred"].shape == fh["pred_eta"].shape == (saved, 16, 6)
            assert fh["index"][()].tolist() == list(range(saved))
            assert (fh.attrs["saved_samples"], fh.attrs["total_samples"], fh.attrs["max_saved"]) == \
                (saved, 130, -1 if max_saved is None else max_saved)
        assert json.loads((out / "metrics.json").read_text())["saved_samples"] == saved
        said = f"predictions.h5: the first 7 of 130 samples (--max-saved 7)"
        assert (said in printed) == (max_saved is not None)
        count, legend, label, title = histograms.pop()
        assert count == 130 and legend == f"mean {mean} (130 samples)" and label == "radius-weighted relative error"
        assert title == f"run/checkpoints/best.pt on split 'all' of {tmp_path.name}/data, no noise"


def test_metrics_json_holds_every_sample_s_errors_by_index_reproducibly(tmp_path):
    """metrics.json's "samples": the split's global indices in order, every reported metric's per-sample values
    (PSNR in dB) whose means are the reported means, the same numbers for the same noisy command."""
    data = write_dataset(tmp_path / "data", "measure", n=40)
    write_splits(data, 0.5, random=True, seed=4, overwrite=True)        # a test split that is not a range
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", model_of("bcrnet-measure"), data)
    docs = []
    for name in ("a", "b"):
        assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp_path / name),
                     "--noise", "5", "--seed", "3", "--batch-size", "7", "--plots", "0"]) == 0
        docs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    doc = docs[0]
    samples, metrics = doc["samples"], doc["metrics"]
    assert samples["index"] == load_split(read_manifest(data), "test").tolist() != list(range(20, 40))
    assert list(samples) == ["index", *metrics] == ["index", "weighted", "rel_l2", "rel_l1", "psnr"]
    for name, summary in metrics.items():
        assert len(samples[name]) == summary["count"] == 20
        assert np.mean(samples[name]) == pytest.approx(summary["mean"], rel=1e-12)
    assert max(samples["weighted"]) == pytest.approx(metrics["weighted"]["max"], rel=1e-12)
    assert min(samples["psnr"]) == pytest.approx(metrics["psnr"]["min"], rel=1e-12)
    assert docs[1]["samples"] == samples
