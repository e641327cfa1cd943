"""`bcrdist export CHECKPOINT --out DIR`: a trained model as portable weights, DIR/model.safetensors (every
tensor of its state dict) and DIR/model.json (what the network is, how its input is laid out and normalised,
where it came from; docs/export.md), readable without bcrdist and loaded back by `bcrdist.load_model(DIR)` and
`bcrdist predict` without unpickling anything (`bcrdist.models.export`).
"""

from __future__ import annotations

import argparse

from bcrdist.models.export import export_model


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a model checkpoint (RUN/checkpoints/best.pt, `bcrdist import-keras` output) "
                   "or a training state (RUN/checkpoints/last.pt: its current weights)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write model.safetensors and model.json into "
                   "(created if needed; an earlier export there is never overwritten)")


def run_export(args: argparse.Namespace) -> int:
    done = export_model(args.checkpoint, args.out)
    print(f"wrote {done.weights} and {done.record}: {done.model_type}, {done.parameters:,} parameters in "
          f"{done.tensors} tensors")
    return 0
