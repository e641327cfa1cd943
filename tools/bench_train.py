"""Training throughput: 1 rank vs 2 ranks (scaling efficiency), eager vs torch.compile, and the share of
step time spent waiting for data — measured with the real trainer on a generated-size synthetic data set.

    python tools/bench_train.py [--size 64] [--alpha 16] [--samples 1024] [--batch 32] [--epochs 3]
                                [--ranks 1,2] [--torchrun] [--precision 32|bf16-mixed] [--no-compile]

Each configuration trains `--epochs` epochs (one stage, no fine-tuning) and reports the samples/s of its
last epoch (after any compilation), read from metrics.jsonl. Ratios are against 1-rank eager, in one run.
On a machine with GPUs the same runs use them (one rank per GPU, bf16 autocast unless `--precision`
says otherwise; the default rank counts are 1 and the number of GPUs). `--torchrun` launches a single rank
through torchrun as well (the multi-rank runs always use it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from bcrdist.data.format import write_manifest, write_shard
from bcrdist.data.splits import write_splits
from bcrdist.data.stats import store_statistics


def make_data(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    infos = []
    for shard, first in enumerate(range(0, n, 256)):
        k = min(256, n - first)
        coe = rng.random((k, size, size // 2), dtype=np.float32)
        measure = rng.standard_normal((k, size, size // 2)).astype(np.float32)
        infos.append(write_shard(root, shard, first, {"measure": measure, "coe": coe}))
    write_manifest(root, infos, provenance={"tool": "tools/bench_train.py"})
    store_statistics(root)
    write_splits(root, 0.9, val=32)
    return root


def run(tmp: Path, data: Path, name: str, nproc: int, compile_: bool, args) -> dict:
    gpu = torch.cuda.is_available()
    precision = args.precision or ("bf16-mixed" if gpu else "32")
    cfg = {"run_dir": str(tmp / name), "results_table": None,
           "data": {"path": str(data), "n_valid": 32},
           "model": {"alpha": args.alpha, "n_cnn": 3, "n_cnn3": 3},
           "schedule": {"batch_size": args.batch, "epochs": args.epochs, "pretrain_stages": [[1, 1.0]],
                        "finetune": False, "patience": 100},
           "runtime": {"compile": "true" if compile_ else "false", "log_every_steps": 0,
                       "precision": precision, "threads": 1 if not gpu else None}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1 and not args.torchrun:
        cmd = [sys.executable, "-m", "bcrdist", "train", "--config", str(path)]
    else:
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc-per-node={nproc}",
               "-m", "bcrdist", "train", "--config", str(path)]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in (tmp / name / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="Ns = Nt; Nd = Nr = size/2")
    p.add_argument("--alpha", type=int, default=16)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--ranks", default=None, help="comma-separated rank counts (default: 1 and 2 on CPU, 1 and "
                   "the number of GPUs on a GPU machine)")
    p.add_argument("--torchrun", action="store_true", help="launch the 1-rank runs through torchrun too")
    p.add_argument("--precision", choices=["32", "bf16-mixed"], default=None,
                   help="runtime.precision (default: bf16-mixed on GPUs, 32 on CPU)")
    args = p.parse_args()
    if args.ranks:
        counts = [int(v) for v in args.ranks.split(",")]
    elif torch.cuda.is_available():
        counts = sorted({1, torch.cuda.device_count()})
    else:
        counts = [1, 2]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        data = make_data(tmp / "data", args.samples, args.size)
        modes = [False] + ([] if args.no_compile else [True])
        variants = [(f"{n} rank{'s' if n > 1 else ''} {'compile' if c else 'eager'}", n, c)
                    for c in modes for n in counts]
        results = []
        for i, (label, nproc, comp) in enumerate(variants):
            results.append((label, nproc, run(tmp, data, f"v{i}", nproc, comp, args)))
    base = next(r for _, n, r in results if n == min(counts))["samples_per_s"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"BCR-Net alpha={args.alpha}, {args.size}x{args.size // 2} -> {args.size}x{args.size // 2}, global batch "
          f"{args.batch}, {args.samples} samples, {device}, torch {torch.__version__}")
    print(f"{'variant':18} {'samples/s':>10} {'vs 1-rank eager':>16} {'scaling eff.':>13} {'data wait':>10}")
    for label, nproc, row in results:
        rate = row["samples_per_s"]
        ref = next(r for lbl, n, r in results if n == min(counts) and ("compile" in lbl) == ("compile" in label))
        eff = rate * min(counts) / (nproc * ref["samples_per_s"])
        print(f"{label:18} {rate:10.1f} {rate / base:15.2f}x {eff:12.0%} {100 * row['data_wait_share']:9.1f}%")


if __name__ == "__main__":
    main()
