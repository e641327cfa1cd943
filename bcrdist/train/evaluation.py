"""Exact evaluation: the one loop that measures a model's errors on a split (`evaluate_model`: the
trainer's per-epoch model selection and its final metrics, and `bcrdist evaluate`), and `evaluate_checkpoint`,
the library half of `bcrdist evaluate`.

Every sample counts once, also under torchrun: each rank evaluates its part and the per-rank sums are
all-reduced (`bcrdist.metrics.ErrorAccumulator`). A non-finite error is never reported as a metric:
`NonFiniteSamples` notes, without a device sync, which samples' errors or data are not finite, and
`check_finite` turns a non-finite mean into one line naming them (data or model at fault).
`evaluate_checkpoint` refuses data whose recorded physics differ from the training data's
(`bcrdist.train.physics_check`), and writes metrics.json (the summaries {metric: {mean, std, max|min, count}}
and every sample's errors, "samples": {"index": [...], metric: [...]} in index order, for paired tests), a
predictions file like the original's (`input`, `output`, `pred` in training units, plus `index` and `pred_eta` in
physical units) for every sample of the split in index order, or the first `max_saved` (its attributes say
which), and PNG plots titled with the checkpoint, split and noise:
true / predicted / error (prediction − truth) images in polar and Cartesian views, the histogram of every
sample's error, and training curves from the run's metrics.jsonl.
"""

from __future__ import annotations

import json
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
from bcrdist.metrics import (HIGHER_IS_BETTER, PIXEL_MAX, REPORTED, REPORTED_FOR, SELECTION_DEFAULT, ErrorAccumulator,
                             per_sample_error, summarize)
from bcrdist.models.checkpoint import load_model
from bcrdist.physics.layout import GridInfo
from bcrdist.train.physics_check import check_physics
from bcrdist.train.plan import evaluation_spec
from bcrdist.transforms import network_input_shape

SHOWN_SAMPLES = 8


def gather(ctx, obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (one broadcast per rank: for the rare error paths and
    the samples `evaluate_checkpoint` writes)."""
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


class KeptSamples:
    """An `on_batch` for `evaluate_checkpoint`: every sample's global index and selection errors of every
    metric evaluated (for the histogram and metrics.json's per-sample errors), and the first `limit` samples
    (None: all) of this rank as NumPy arrays: `index` (B,), `input` (B, Ns, Nd'), `target` and `pred` (B, Nt, Nr)
    in training units, `error` (B,) of the `selection` metric."""

    def __init__(self, selection: str, limit: int | None):
        self.selection, self.limit = selection, limit
        self.errors: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        self.arrays: dict[str, list[np.ndarray]] = {"index": [], "input": [], "target": [], "pred": [], "error": []}
        self.count = 0

    def __call__(self, x, y, pred, errors, index) -> None:
        index = torch.as_tensor(index).cpu().numpy()
        every = {name: e.cpu().numpy() for name, e in errors.items()}
        error = every[self.selection]
        self.errors.append((index, every))
        take = len(index) if self.limit is None else max(0, min(len(index), self.limit - self.count))
        if take:
            for key, value in (("index", index), ("input", x), ("target", y), ("pred", pred), ("error", error)):
                self.arrays[key].append(np.asarray(value[:take].cpu() if torch.is_tensor(value) else value[:take]))
            self.count += take

    def local(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(this rank's kept arrays, {"index": every index (N,), metric: every selection error (N,)} of this
        rank; {"index": empty} when it evaluated no sample)."""
        kept = {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.arrays.items()}
        if not self.errors:
            return kept, {"index": np.zeros(0, dtype=np.int64)}
        every = {"index": np.concatenate([i for i, _ in self.errors])}
        every.update({name: np.concatenate([e[name] for _, e in self.errors]) for name in self.errors[0][1]})
        return kept, every


def merged(parts: list[tuple[dict, dict]], limit: int | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every rank's `KeptSamples.local()` → (the kept arrays of the `limit` lowest sample indices over all ranks,
    in index order; {"index": (N,), metric: selection errors (N,)} of every sample, in index order): the same
    files for any number of ranks."""
    kept_parts = [k for k, _ in parts if len(k["index"])]
    if kept_parts:
        kept = {key: np.concatenate([k[key] for k in kept_parts]) for key in kept_parts[0]}
        order = np.argsort(kept["index"], kind="stable")[:limit]
        kept = {key: value[order] for key, value in kept.items()}
    else:
        kept = {key: np.zeros(0) for key in ("index", "input", "target", "pred", "error")}
    every = [e for _, e in parts if len(e["index"])]
    if not every:
        return kept, {"index": np.zeros(0, dtype=np.int64)}
    order = np.argsort(np.concatenate([e["index"] for e in every]), kind="stable")
    return kept, {name: np.concatenate([e[name] for e in every])[order] for name in every[0]}


def evaluate_checkpoint(checkpoint, data, split="test", out=None, noise=0.0, n_plots=4, batch_size=64,
                        device="auto", noise_model="fan", seed=None, max_saved=None,
                        allow_physics_mismatch=False) -> dict:
    """Evaluate on every rank of the current launch; rank 0 writes the files. Returns the metrics.
    `n_plots` 0: no sample plot. `noise` (percent) of `noise_model` (`bcrdist.noise`), one fixed draw per
    sample seeded by `seed` (None: the run's seed, so the run's own evaluation noise gives its validation and
    test draws). predictions.h5 holds every sample of the split, or the first `max_saved`; the error histogram
    always every sample. Data whose recorded physics differ from the training data's are refused
    (`bcrdist.train.physics_check`) unless `allow_physics_mismatch`."""
    ctx = init_distributed(device)
    try:
        model, meta = load_model(checkpoint, ctx.device, with_meta=True)
        manifest = read_manifest(data)
        spec = evaluation_spec(model.record(), noise, noise_model)
        check_shapes(model, checkpoint, manifest, spec)
        physics = check_physics(model.record(), meta, manifest, str(data), allow_physics_mismatch)
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
        # the plotted samples are the first saved ones: keep enough for both
        keep = KeptSamples(selection, None if max_saved is None else max(int(max_saved), n_plots))
        nonfinite = NonFiniteSamples()

        def batches():
            for batch in reader:
                # targets in training units, as the original's files
                yield batch["input"].to(ctx.device), batch["target"].to(ctx.device) / scale, batch["index"]

        def on_batch(x, y, pred, errors, index) -> None:
            nonfinite(x, y, pred, errors, index)
            keep(x, y, pred, errors, index)

        stats = evaluate_model(model, batches(), ctx, metrics=reported, on_batch=on_batch)
        check_finite(stats, nonfinite, ctx, f"{data}: split {split!r}")
        metrics = summarize(stats["out"], pixel_max=PIXEL_MAX)
        parts = gather(ctx, keep.local())
        if ctx.is_main:
            write_evaluation(out, parts, metrics, physics, model, manifest, run_dir,
                             dict(checkpoint=checkpoint, data=data, split=split, noise=noise, noise_model=noise_model,
                                  seed=seed, n_plots=n_plots, max_saved=max_saved, selection=selection, scale=scale))
        return metrics
    finally:
        shutdown_distributed()


def short_path(path, parts: int = 3) -> str:
    """The last `parts` components of `path` (a plot title's name of a checkpoint or data set)."""
    return "/".join(Path(str(path)).parts[-parts:])


def sample_record(every: dict[str, np.ndarray], metrics) -> dict[str, list]:
    """metrics.json's "samples": {"index": [global sample index], metric: [value]} for every metric of
    `metrics`, in index order and in the reported units (relative errors; PSNR in dB), so that their means are
    the reported means and two methods' errors join on the index (`bcrdist.paired`). `every`: `merged`'s
    selection errors."""
    record = {"index": every["index"].astype(np.int64).tolist()}
    for name in metrics:
        values = every.get(name, np.zeros(0)).astype(np.float64)
        record[name] = (-values if name in HIGHER_IS_BETTER else values).tolist()
    return record


def write_evaluation(out: Path, parts, metrics: dict, physics, model, manifest, run_dir: Path, run: dict) -> None:
    """Rank 0's files of `evaluate_checkpoint`: metrics.json (with every sample's errors, `sample_record`),
    predictions.h5 (the saved samples, in index order), the sample plots, the error histogram of every sample
    and the training curves; and its summary lines. `parts`: every rank's `KeptSamples.local()`; `run`: the
    evaluation's settings."""
    # imported here, where the plots are drawn: matplotlib would add ~0.4 s to the start of every training
    # process (the trainer imports this module), and to each of its ranks
    from bcrdist.train import plots

    selection, scale, max_saved = run["selection"], run["scale"], run["max_saved"]
    kept, every = merged(parts, max(max_saved, run["n_plots"]) if max_saved is not None else None)
    errors = every.get(selection, np.zeros(0))
    total = int(metrics[selection]["count"])
    saved = total if max_saved is None else min(int(max_saved), total)
    out.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": str(run["checkpoint"]), "data": str(run["data"]), "split": str(run["split"]),
              "noise": run["noise"], "noise_model": run["noise_model"], "seed": run["seed"], "metrics": metrics,
              "saved_samples": saved, "physics": physics.record(), "samples": sample_record(every, metrics)}
    atomic_write_json(out / "metrics.json", json_safe(result))

    def write_predictions(fh) -> None:
        with h5py.File(fh, "w") as f:
            f["input"], f["output"], f["pred"] = kept["input"][:saved], kept["target"][:saved], kept["pred"][:saved]
            f["index"], f["pred_eta"] = kept["index"][:saved], kept["pred"][:saved] * scale
            f.attrs.update({"out_scale": scale, "saved_samples": saved, "total_samples": total,
                            "max_saved": -1 if max_saved is None else int(max_saved),
                            "selection_metric": selection, "physics": json.dumps(json_safe(physics.record()))})

    atomic_write_held(out / "predictions.h5", write_predictions)
    split, noise = run["split"], run["noise"]
    context = (f"{short_path(run['checkpoint'])} on split {split!r} of {short_path(run['data'], 2)}, "
               + (f"noise {noise:g} % ({run['noise_model']})" if noise else "no noise"))
    k = min(run["n_plots"], len(kept["index"]))
    if k:
        plots.plot_samples(kept["target"][:k] * scale, kept["pred"][:k] * scale, kept["error"][:k],
                           kept["index"][:k], out / "samples.png",
                           grid=plot_grid(manifest, model.target, model.data_output), title=context,
                           metric=selection)
    if len(errors):
        plots.plot_error_histogram(errors, out / "error_histogram.png", label=plots.metric_label(selection),
                                   title=context)
    plots.plot_training_curves(run_dir / "metrics.jsonl", out / "training_curves.png")
    first = ("radius-weighted relative error {m[weighted][mean]:.4f} (max {m[weighted][max]:.4f}), "
             if "weighted" in metrics else "")
    print(f"{split}: {metrics[selection]['count']} samples, " + first.format(m=metrics)
          + f"relative L2 {metrics['rel_l2']['mean']:.4f}, relative L1 {metrics['rel_l1']['mean']:.4f}, "
          f"PSNR {metrics['psnr']['mean']:.1f} dB; files in {out}")
    if saved < total:
        print(f"predictions.h5: the first {saved} of {total} samples (--max-saved {max_saved}); the metrics and the "
              f"error histogram use all {total}")
    if physics.differing:
        print(f"note: the data's physics differ from the training data's ({physics.summary()}); evaluated anyway "
              f"(--allow-physics-mismatch), recorded in metrics.json")
