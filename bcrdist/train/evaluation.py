"""Evaluation of a trained checkpoint on a split (`bcrdist evaluate`).

Exact metrics of a trained model on a split (each sample once, also under torchrun: per-rank sums are
all-reduced), a predictions file like the original's (`input`, `output`, `pred` for the first samples, in
training units, plus `index` and `pred_eta` in physical units), and PNG plots: true / predicted / error
images in polar and Cartesian views, the error histogram, and training curves from the run's metrics.jsonl.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from bcrdist.data.dataset import ShardedDataset
from bcrdist.data.preprocess import Preprocess
from bcrdist.distributed import init_distributed, shutdown_distributed
from bcrdist.fileio import atomic_write, atomic_write_json, json_safe
from bcrdist.metrics import ErrorAccumulator, per_sample_error
from bcrdist.models.checkpoint import load_model
from bcrdist.train import plots

N_SAVED = 100


def evaluate(checkpoint, data, split="test", out=None, noise=0.0, n_plots=4, batch_size=64,
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
        acc = {name: ErrorAccumulator() for name in ("weighted", "rel_l2", "psnr")}
        keep = {"index": [], "input": [], "target": [], "pred": [], "error": []}
        n_kept = 0
        scale = float(model.out_scale)
        with torch.no_grad():
            for batch in reader:
                x = batch["input"].to(ctx.device)
                y = batch["target"].to(ctx.device) / scale          # training units, as the original's files
                pred = model(x).float()
                errors = {name: per_sample_error(name, pred, y) for name in acc}
                for name, e in errors.items():
                    acc[name].add(e)
                if n_kept < N_SAVED:
                    take = slice(0, N_SAVED - n_kept)
                    for key, value in (("index", batch["index"]), ("input", x), ("target", y), ("pred", pred),
                                       ("error", errors["weighted"])):
                        keep[key].append(value[take].cpu().numpy())
                    n_kept += len(keep["index"][-1])
        metrics = {name: a.reduce(ctx) for name, a in acc.items()}
        metrics["psnr"] = {k: (-v if k in ("mean", "max") else v) for k, v in metrics["psnr"].items()}
        metrics["psnr"]["min"] = metrics["psnr"].pop("max")
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
