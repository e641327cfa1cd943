"""Exact evaluation: the one loop that measures a model's errors on a split (`evaluate_model`: the
trainer's per-epoch model selection and its final metrics, and `bcrdist evaluate`), and `evaluate_checkpoint`,
the library half of `bcrdist evaluate`.

Every sample counts once, also under torchrun: each rank evaluates its part and the per-rank sums are
all-reduced (`bcrdist.metrics.ErrorAccumulator`). A non-finite error is never reported as a metric:
`NonFiniteSamples` notes, without a device sync, which samples' errors or data are not finite, and
`check_finite` turns a non-finite mean into one line naming them (data or model at fault).
`evaluate_checkpoint` also writes a predictions file like the original's (`input`, `output`, `pred` for the
first samples, in training units, plus `index` and `pred_eta` in physical units) and PNG plots: true /
predicted / error images in polar and Cartesian views, the error histogram, and training curves from the
run's metrics.jsonl.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import h5py
import numpy as np
import torch

from bcrdist.data.dataset import ShardedDataset
from bcrdist.data.format import read_manifest
from bcrdist.data.preprocess import Preprocess, noise_source
from bcrdist.distributed import init_distributed, shutdown_distributed
from bcrdist.errors import DataError
from bcrdist.fileio import atomic_write_held, atomic_write_json, json_safe
from bcrdist.data.grid import layout_of
from bcrdist.metrics import (PIXEL_MAX, REPORTED, REPORTED_FOR, SELECTION_DEFAULT, ErrorAccumulator, per_sample_error,
                             summarize)
from bcrdist.models.checkpoint import load_model
from bcrdist.physics.layout import GridInfo
from bcrdist.train import plots
from bcrdist.train.plan import evaluation_spec
from bcrdist.transforms import network_input_shape

SHOWN_SAMPLES = 8


def gather(ctx, obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (one broadcast per rank: for the rare error paths)."""
    if not ctx.distributed:
        return [obj]
    return [ctx.broadcast_object(obj if ctx.rank == r else None, src=r) for r in range(ctx.world_size)]


def sample_list(indices) -> str:
    """'3, 17, 40' or '3, 17, … (12 samples)'."""
    indices = [int(i) for i in indices]
    shown = ", ".join(map(str, indices[:SHOWN_SAMPLES]))
    return shown if len(indices) <= SHOWN_SAMPLES else f"{shown}, … ({len(indices)} samples)"


class NonFiniteSamples:
    """An `on_batch` for `evaluate_model` with batches (x, y, index): keeps, per batch and on the device, the
    global indices and whether each sample's errors and its input and target are finite."""

    def __init__(self):
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, y, pred, errors, index=None, *extra) -> None:
        if index is None:
            return
        finite_errors = torch.stack([torch.isfinite(e) for e in errors.values()]).all(dim=0)
        finite_data = torch.isfinite(x).flatten(1).all(dim=1) & torch.isfinite(y).flatten(1).all(dim=1)
        self.parts.append((index, finite_errors, finite_data))

    def found(self) -> tuple[list[int], list[int]]:
        """This rank's (samples with non-finite inputs or targets, samples with finite data but a non-finite
        error)."""
        bad_data, bad_pred = [], []
        for index, finite_errors, finite_data in self.parts:
            index = torch.as_tensor(index).cpu()
            data_ok, err_ok = finite_data.cpu(), finite_errors.cpu()
            bad_data += index[~data_ok].tolist()
            bad_pred += index[data_ok & ~err_ok].tolist()
        return bad_data, bad_pred


def check_finite(stats: dict[str, dict[str, dict]], samples: NonFiniteSamples, ctx, where: str,
                 data_error=DataError, model_error=DataError, after: str = "") -> None:
    """Raise when a mean of `stats` ({head: {metric: {mean, …}}}, all-reduced) is not finite: `data_error`
    when inputs or targets of samples are not finite, else `model_error`; one line starting with `where`,
    naming the samples. Every rank must call it (the samples are gathered when it fails)."""
    if all(math.isfinite(s["mean"]) for per_head in stats.values() for s in per_head.values() if s["count"]):
        return
    parts = gather(ctx, samples.found())
    bad_data = sorted(i for data, _ in parts for i in data)
    bad_pred = sorted(i for _, pred in parts for i in pred)
    if bad_data:
        raise data_error(f"{where}: non-finite values in the inputs or targets of samples {sample_list(bad_data)}; "
                         f"`bcrdist verify` checks a data set{after}")
    which = f" for samples {sample_list(bad_pred)}" if bad_pred else ""
    raise model_error(f"{where}: the model's predictions are not finite{which} (the data are finite){after}")


@torch.no_grad()
def evaluate_model(model, batches: Iterable[tuple], ctx, metrics=REPORTED, heads=("out",),
                   on_batch: Callable | None = None) -> dict[str, dict[str, dict]]:
    """Statistics of the per-sample selection errors (`per_sample_error`) of `model` over this rank's
    `batches`, all-reduced over the ranks of `ctx`: {head: {metric: {mean, std, max, count}}}.

    batches: (x (B, Ns, Nd'), y (B, Nt, Nr), *extra) on the model's device; heads: "out" (the output) and/or
    "aux" (the auxiliary head of pre-training). `on_batch(x, y, pred, errors, *extra)` sees each batch's output
    (B, Nt, Nr) and its errors {metric: (B,)}. The model is in eval mode meanwhile; every rank must call this.
    """
    was_training = model.training
    model.eval()
    acc = {head: {name: ErrorAccumulator() for name in metrics} for head in heads}
    for x, y, *extra in batches:
        if "aux" in heads:
            out, aux = model(x, return_aux=True)
            preds = {"out": out.float(), "aux": aux.float()}
        else:
            preds = {"out": model(x).float()}
        for head in heads:
            errors = {name: per_sample_error(name, preds[head], y) for name in metrics}
            for name, e in errors.items():
                acc[head][name].add(e)
            if on_batch is not None and head == "out":
                on_batch(x, y, preds["out"], errors, *extra)
    model.train(was_training)
    return {head: {name: a.reduce(ctx) for name, a in per_head.items()} for head, per_head in acc.items()}


N_SAVED = 100


def check_shapes(model, checkpoint, manifest, spec: Preprocess) -> None:
    """Refuse a data set that lacks the model's input or target, or whose samples are not the shapes the model
    was made for, naming both."""
    x, imag = spec.input, spec.input_imag
    base = x.removesuffix(".real")
    try:
        shape_in, shape_out = manifest.datasets[base].shape, manifest.datasets[model.target].shape
    except KeyError as exc:
        raise DataError(f"{manifest.path}: no dataset {exc} to evaluate on (the model reads {base!r} and predicts "
                        f"{model.target!r})") from None
    n_input = network_input_shape(shape_in, imag is not None) if len(shape_in) == 2 else shape_in
    want_in, want_out = tuple(model.data_input), tuple(model.data_output)
    if tuple(n_input) != want_in or tuple(shape_out) != want_out:
        def shape(s) -> str:
            return "×".join(map(str, s))
        raise DataError(f"{checkpoint}: a model for input {shape(want_in)} → output {shape(want_out)}, but the data "
                        f"set {manifest.root} has input {shape(n_input)} → target {shape(shape_out)} ({base} "
                        f"{shape(shape_in)}{f', with {imag}' if imag else ''}); evaluate it on data of its size")


def plot_grid(manifest, target: str, shape) -> GridInfo | None:
    """The grid the sample plots are drawn on: the data set's record; a Cartesian target without one in pixel
    units (nodes 0 … n − 1); None (polar) otherwise."""
    layout = layout_of(manifest, target)
    if manifest.grid is not None or layout.target_kind == "polar":
        return manifest.grid
    return GridInfo(k=1.0, angles="endpoint", n_obs=2, n_inc=2, target="cartesian", image_size=shape[0],
                    image_extent=float(shape[0] - 1), image_points="nodes")


def evaluate_checkpoint(checkpoint, data, split="test", out=None, noise=0.0, n_plots=4, batch_size=64,
                        device="auto", noise_model="fan", seed=None) -> dict:
    """Evaluate on every rank of the current launch; rank 0 writes the files. Returns the metrics.
    `n_plots` 0: no sample plot. `noise` (percent) of `noise_model` (`bcrdist.noise`), one fixed draw per
    sample seeded by `seed` (None: the run's seed, so the run's own evaluation noise gives its validation and
    test draws)."""
    ctx = init_distributed(device)
    try:
        model, meta = load_model(checkpoint, ctx.device, with_meta=True)
        manifest = read_manifest(data)
        spec = evaluation_spec(model.record(), noise, noise_model)
        check_shapes(model, checkpoint, manifest, spec)
        kind = layout_of(manifest, model.target).target_kind
        reported, selection = REPORTED_FOR[kind], SELECTION_DEFAULT[kind]
        run_dir = Path(checkpoint).resolve().parent.parent
        out = Path(out) if out else run_dir / f"eval-{Path(str(split)).stem}"
        noise_source(manifest, spec, "--noise-model")
        seed = meta.get("seed", 0) if seed is None else int(seed)
        reader = ShardedDataset(data, split=None if split == "all" else split, rank=ctx.rank,
                                world_size=ctx.world_size, shuffle=False, exact=True, batch_size=batch_size,
                                preprocess=spec, seed=seed)
        scale = float(model.out_scale)
        keep = {"index": [], "input": [], "target": [], "pred": [], "error": []}
        nonfinite = NonFiniteSamples()

        def batches():
            for batch in reader:
                # targets in training units, as the original's files
                yield batch["input"].to(ctx.device), batch["target"].to(ctx.device) / scale, batch["index"]

        def keep_first(x, y, pred, errors, index) -> None:
            nonfinite(x, y, pred, errors, index)
            n_kept = sum(len(i) for i in keep["index"])
            if n_kept < N_SAVED:
                take = slice(0, N_SAVED - n_kept)
                for key, value in (("index", index), ("input", x), ("target", y), ("pred", pred),
                                   ("error", errors[selection])):
                    keep[key].append(value[take].cpu().numpy())

        stats = evaluate_model(model, batches(), ctx, metrics=reported, on_batch=keep_first)
        check_finite(stats, nonfinite, ctx, f"{data}: split {split!r}")
        metrics = summarize(stats["out"], pixel_max=PIXEL_MAX)
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            result = {"checkpoint": str(checkpoint), "data": str(data), "split": str(split), "noise": noise,
                      "noise_model": noise_model, "seed": seed, "metrics": metrics}
            atomic_write_json(out / "metrics.json", json_safe(result))
            kept = {k: np.concatenate(v) if v else np.zeros(0) for k, v in keep.items()}

            def write_predictions(fh) -> None:
                with h5py.File(fh, "w") as f:
                    f["input"], f["output"], f["pred"] = kept["input"], kept["target"], kept["pred"]
                    f["index"], f["pred_eta"] = kept["index"], kept["pred"] * scale
                    f.attrs["out_scale"] = scale

            atomic_write_held(out / "predictions.h5", write_predictions)
            if len(kept["index"]):
                k = min(n_plots, len(kept["index"]))
                if k:
                    plots.plot_samples(kept["target"][:k] * scale, kept["pred"][:k] * scale, kept["error"][:k],
                                       kept["index"][:k], out / "samples.png",
                                       grid=plot_grid(manifest, model.target, model.data_output))
                plots.plot_error_histogram(kept["error"], out / "error_histogram.png")
            plots.plot_training_curves(run_dir / "metrics.jsonl", out / "training_curves.png")
            first = ("radius-weighted relative error {m[weighted][mean]:.4f} (max {m[weighted][max]:.4f}), "
                     if "weighted" in metrics else "")
            print(f"{split}: {metrics[selection]['count']} samples, " + first.format(m=metrics)
                  + f"relative L2 {metrics['rel_l2']['mean']:.4f}, relative L1 {metrics['rel_l1']['mean']:.4f}, "
                  f"PSNR {metrics['psnr']['mean']:.1f} dB; files in {out}")
        return metrics
    finally:
        shutdown_distributed()
