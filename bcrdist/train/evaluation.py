"""Exact evaluation: the one loop that measures a model's errors on a split (`evaluate_model`: the
trainer's per-epoch model selection and its final metrics, and `bcrdist evaluate`), and `evaluate_checkpoint`,
the library half of `bcrdist evaluate`.

Every sample counts once, also under torchrun: each rank evaluates its part and the per-rank sums are
all-reduced (`bcrdist.metrics.ErrorAccumulator`). `evaluate_checkpoint` also writes a predictions file like
the original's (`input`, `output`, `pred` for the first samples, in training units, plus `index` and
`pred_eta` in physical units) and PNG plots: true / predicted / error images in polar and Cartesian views,
the error histogram, and training curves from the run's metrics.jsonl.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import h5py
import numpy as np
import torch

from bcrdist.data.dataset import ShardedDataset
from bcrdist.data.preprocess import Preprocess
from bcrdist.distributed import init_distributed, shutdown_distributed
from bcrdist.fileio import atomic_write, atomic_write_json, json_safe
from bcrdist.metrics import REPORTED, ErrorAccumulator, per_sample_error, summarize
from bcrdist.models.checkpoint import load_model
from bcrdist.train import plots

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


def evaluate_checkpoint(checkpoint, data, split="test", out=None, noise=0.0, n_plots=4, batch_size=64,
                        device="auto") -> dict:
    """Evaluate on every rank of the current launch; rank 0 writes the files. Returns the metrics."""
    ctx = init_distributed(device)
    try:
        model, meta = load_model(checkpoint, device=ctx.device, with_meta=True)
        run_dir = Path(checkpoint).resolve().parent.parent
        out = Path(out) if out else run_dir / f"eval-{Path(str(split)).stem}"
        spec = Preprocess(input="measure", target="coe", input_imag="measure_imag" if model.use_imag else None,
                          antipodal=model.antipodal, normalize_target=False, noise=noise, noise_fixed=True)
        reader = ShardedDataset(data, split=None if split == "all" else split, rank=ctx.rank,
                                world_size=ctx.world_size, shuffle=False, exact=True, batch_size=batch_size,
                                preprocess=spec, seed=meta.get("seed", 0))
        scale = float(model.out_scale)
        keep = {"index": [], "input": [], "target": [], "pred": [], "error": []}

        def batches():
            for batch in reader:
                # targets in training units, as the original's files
                yield batch["input"].to(ctx.device), batch["target"].to(ctx.device) / scale, batch["index"]

        def keep_first(x, y, pred, errors, index) -> None:
            n_kept = sum(len(i) for i in keep["index"])
            if n_kept < N_SAVED:
                take = slice(0, N_SAVED - n_kept)
                for key, value in (("index", index), ("input", x), ("target", y), ("pred", pred),
                                   ("error", errors["weighted"])):
                    keep[key].append(value[take].cpu().numpy())

        metrics = summarize(evaluate_model(model, batches(), ctx, on_batch=keep_first)["out"])
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            result = {"checkpoint": str(checkpoint), "data": str(data), "split": str(split), "noise": noise,
                      "metrics": metrics}
            atomic_write_json(out / "metrics.json", json_safe(result))
            kept = {k: np.concatenate(v) if v else np.zeros(0) for k, v in keep.items()}
            def write_predictions(fh) -> None:
                with h5py.File(fh, "w") as f:
                    f["input"], f["output"], f["pred"] = kept["input"], kept["target"], kept["pred"]
                    f["index"], f["pred_eta"] = kept["index"], kept["pred"] * scale
                    f.attrs["out_scale"] = scale

            atomic_write(out / "predictions.h5", write_predictions)
            if len(kept["index"]):
                k = min(n_plots, len(kept["index"]))
                plots.plot_samples(kept["target"][:k] * scale, kept["pred"][:k] * scale, kept["error"][:k],
                                   kept["index"][:k], out / "samples.png")
                plots.plot_error_histogram(kept["error"], out / "error_histogram.png")
            plots.plot_training_curves(run_dir / "metrics.jsonl", out / "training_curves.png")
            print(f"{split}: {metrics['weighted']['count']} samples, radius-weighted relative error "
                  f"{metrics['weighted']['mean']:.4f} (max {metrics['weighted']['max']:.4f}), relative L2 "
                  f"{metrics['rel_l2']['mean']:.4f}, PSNR {metrics['psnr']['mean']:.1f} dB; files in {out}")
        return metrics
    finally:
        shutdown_distributed()
