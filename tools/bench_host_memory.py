"""The CPU train step with freed host memory kept for reuse (`runtime.host_memory: keep`, the trainer's default
on the CPU) against the C library's defaults (`release`), per network at the study's shape.

    .venv/bin/python tools/bench_host_memory.py [--network cnn,study_bcnn,...|all] [--size 100] [--batch 32]
                                                [--rounds 3] [--steps 3] [--threads 2]

The setting is per process (glibc's mallopt), so every measurement is a fresh process: per round and network,
one process per setting, the order alternating every round. A process builds the network as
`tools/bench_model.py --network` does (inside `ScatteringModel`, the trainer's NAdam, fp32, MSE), runs one
warm-up step, then `--steps` timed steps, and reports the median step, the minor page faults per step (pages the
kernel had to map and zero) and its peak resident memory. Printed per network: ms per sample with each setting
(the median over the rounds), the ratio release ÷ keep (of the medians; the range of the per-round ratios), the
page faults per step and the peak resident memory of each. Both settings compute the same bits
(tests/test_host_memory.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("release", "keep")


def child(args) -> None:
    """One process: the timed steps of one network under one setting; prints one JSON line."""
    import torch

    from bcrdist.train.process_setup import keep_freed_memory

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_model as bm
    from bcrdist.train.optim import make_optimizer

    if args.threads:
        torch.set_num_threads(args.threads)
    applied = keep_freed_memory() if args.child == "keep" else False
    model, cfg, shape = bm.study_model(args.network, args.size, None)
    step = bm.Variant(args.network, model, lambda m, x: m(x), make_optimizer(cfg, model.parameters(), bm.LR), None,
                      torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(args.batch, args.size, args.size, generator=gen)
    x = torch.randn(args.batch, *shape, generator=gen)
    step.step(x, y)
    times, faults = [], []
    for _ in range(args.steps):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        step.step(x, y)
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(json.dumps({"applied": applied, "step_s": statistics.median(times), "faults": statistics.median(faults),
                      "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", default="cnn,cnnb,study_bcnn,nio,bcnn,bcrnet", help="comma-separated, or all")
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per process")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    from bcrdist.errors import ConfigError
    from bcrdist.models import network_class, network_names

    names = network_names() if args.network == "all" else args.network.split(",")
    for name in names:
        try:
            network_class(name, "--network")
        except ConfigError as exc:
            print(f"bench_host_memory: error: {exc}", file=sys.stderr)
            return 2
    results = {(name, mode): [] for name in names for mode in MODES}
    for r in range(args.rounds):
        for name in names:
            for mode in (MODES if r % 2 == 0 else tuple(reversed(MODES))):
                cmd = [sys.executable, __file__, "--child", mode, "--network", name, "--size", str(args.size),
                       "--batch", str(args.batch), "--steps", str(args.steps)]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode:
                    print(f"bench_host_memory: error: {name} ({mode}) failed: "
                          f"{(run.stderr.strip().splitlines() or ['no output'])[-1]}", file=sys.stderr)
                    return 1
                results[(name, mode)].append(json.loads(run.stdout.strip().splitlines()[-1]))
    print(f"train step at {args.size}×{args.size}, batch {args.batch}, fp32; {args.rounds} rounds × {args.steps} "
          f"timed steps, one process per network and setting, order alternating")
    print(f"{'network':11} {'release ms':>11} {'keep ms':>9} {'release/keep':>13} {'per round':>12} "
          f"{'faults release':>15} {'faults keep':>12} {'RSS release':>12} {'RSS keep':>9}")
    for name in names:
        rel, keep = results[(name, "release")], results[(name, "keep")]
        if not all(k["applied"] for k in keep):
            print(f"{name}: keep_freed_memory() did not take effect (not glibc?)")
        ms = [statistics.median(v["step_s"] for v in runs) / args.batch * 1e3 for runs in (rel, keep)]
        ratios = [a["step_s"] / b["step_s"] for a, b in zip(rel, keep)]
        faults = [statistics.median(v["faults"] for v in runs) for runs in (rel, keep)]
        rss = [max(v["max_rss_gb"] for v in runs) for runs in (rel, keep)]
        print(f"{name:11} {ms[0]:11.2f} {ms[1]:9.2f} {ms[0] / ms[1]:12.2f}× {min(ratios):5.2f}–{max(ratios):<5.2f} "
              f"{faults[0]:15,.0f} {faults[1]:12,.0f} {rss[0]:9.2f} GB {rss[1]:6.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
