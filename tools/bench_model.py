"""Forward+backward throughput of BCR-Net: eager vs torch.compile, fp32 vs bf16 autocast, CPU and GPU.

    python tools/bench_model.py [--size 128] [--alpha 40] [--batch 32] [--steps 10] [--no-compile]

Prints one table per device with samples/s and the ratio to eager fp32 measured in the same run (these
machines are noisy: compare ratios, not absolute numbers across runs).
"""

from __future__ import annotations

import argparse
import time

import torch

from bcrdist.models import BCRNet


def bench(model, x, y, steps: int, amp_dtype, warmup: int = 2) -> float:
    """Samples per second of forward + MSE + backward."""
    device = x.device.type

    def step():
        with torch.autocast(device, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        loss.backward()

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128, help="Ns = Nd = Nt = Nr")
    p.add_argument("--alpha", type=int, default=40)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    n = args.size
    print(f"BCR-Net alpha={args.alpha}, {n}x{n} -> {n}x{n}, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    for device in devices:
        torch.manual_seed(0)
        net = BCRNet((n, n), (n, n), alpha=args.alpha).to(device)
        x = torch.randn(args.batch, n, n, device=device)
        y = torch.randn(args.batch, n, n, device=device)
        steps = args.steps * (10 if device == "cuda" else 1)
        rows = []
        variants = [("eager", "fp32", net, None), ("eager", "bf16", net, torch.bfloat16)]
        if not args.no_compile:
            compiled = torch.compile(net)
            variants += [("compile", "fp32", compiled, None), ("compile", "bf16", compiled, torch.bfloat16)]
        for mode, precision, model, dtype in variants:
            t0 = time.perf_counter()
            rate = bench(model, x, y, steps, dtype)
            rows.append((mode, precision, rate, time.perf_counter() - t0))
        base = rows[0][2]
        name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
        print(f"\n{name}")
        print(f"{'mode':8} {'precision':9} {'samples/s':>10} {'vs eager fp32':>14} {'wall s (incl. compile)':>23}")
        for mode, precision, rate, wall in rows:
            print(f"{mode:8} {precision:9} {rate:10.1f} {rate / base:13.2f}x {wall:23.1f}")


if __name__ == "__main__":
    main()
