"""BCR-Net train step (forward + MSE + backward + optimizer): today's path against the one it replaced, measured
in one run — eager and torch.compile (on CUDA also CUDA graphs: compile mode="reduce-overhead"), fp32 and bf16
autocast, CPU and (when present) CUDA.

    python tools/bench_model.py [--size 128] [--alpha 40] [--batch 32] [--rounds 7] [--steps 2] [--threads N]
                                [--no-compile] [--no-bf16] [--no-old-bf16] [--train-steps 300] [--device cpu]

"old" is the formulation bcrdist used before issue 14 (tests/torch_reference.py: a pad op before every
convolution, the default memory layout, torch's per-parameter NAdam loop); "new" is `BCRNet.forward` with
`bcrdist.train.optim.make_optimizer`. Every variant has its own copy of the same network and optimizer; the
variants take turns, `--steps` steps each, for `--rounds` rounds (these machines are noisy: the medians and
the per-round ratios are what to compare). Per variant it prints ms per step (median, min–max), samples/s,
the ratio to old eager fp32 (ratio of medians, and the range of the per-round ratios), the arithmetic rate
and its fraction of the FLOP roofline — the best GFLOP/s of a 2048³ fp32 (bf16) matmul (MKL/cuBLAS)
measured in the same run, before the rounds and in each of them —, the operator launches of one step (compute operators started from
Python or the autograd engine, views excluded; on CUDA also the device kernels) and the peak memory of one step above what
was live before it. `--train-steps` adds a short training run of fp32 against bf16 autocast on a synthetic
teacher task (a second, randomly initialised BCR-Net gives the targets), reporting the relative error each
reaches. `--out FILE` also writes the results as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch_reference as ref  # noqa: E402
from bcrdist.models import BCRNet  # noqa: E402
from bcrdist.train.config import TrainConfig  # noqa: E402
from bcrdist.train.optim import make_optimizer  # noqa: E402

LR = 1e-3


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of an n×n×n matmul: the arithmetic roofline of this device and thread count."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


class Variant:
    """One way to run the train step, with its own network and optimizer."""

    def __init__(self, name: str, net: BCRNet, forward, optimizer, amp_dtype, device: torch.device,
                 compiled: bool = False, cudagraphs: bool = False):
        self.name, self.net, self.forward, self.optimizer = name, net, forward, optimizer
        self.amp_dtype, self.device, self.compiled, self.cudagraphs = amp_dtype, device, compiled, cudagraphs
        self.times: list[float] = []
        self.first_call_s = 0.0

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.cudagraphs:  # a new iteration: the graphs' previous outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        amp = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
               else nullcontext())
        with amp:
            out = self.forward(self.net, x)
        loss = F.mse_loss(out.float(), y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def make_variants(args, device: torch.device) -> list[Variant]:
    n = args.size
    torch.manual_seed(0)
    base = BCRNet((n, n), (n, n), alpha=args.alpha).to(device)
    cfg = TrainConfig()

    def new_opt(net):
        return make_optimizer(cfg, net.parameters(), LR)

    def old_opt(net):
        return ref.reference_optimizer(net.parameters(), LR)

    def eager(net, x):
        return net(x)

    # (name, forward, optimizer, autocast dtype, torch.compile mode or None)
    specs = [("old eager fp32", ref.bcrnet_forward, old_opt, None, None),
             ("new eager fp32", eager, new_opt, None, None)]
    if args.bf16:
        if args.old_bf16:
            specs.append(("old eager bf16", ref.bcrnet_forward, old_opt, torch.bfloat16, None))
        specs.append(("new eager bf16", eager, new_opt, torch.bfloat16, None))
    if args.compile:
        specs.append(("new compile fp32", None, new_opt, None, "default"))
        if args.bf16:
            specs.append(("new compile bf16", None, new_opt, torch.bfloat16, "default"))
        if device.type == "cuda":  # CUDA graphs of forward + backward (measured only; not a bcrdist code path)
            specs.append(("new graphs fp32", None, new_opt, None, "reduce-overhead"))
    variants = []
    for name, forward, opt, dtype, mode in specs:
        net = copy.deepcopy(base)
        if mode is not None:
            compiled_net = torch.compile(net, mode=mode, dynamic=False)
            forward = lambda _net, x, c=compiled_net: c(x)  # noqa: E731
        variants.append(Variant(name, net, forward, opt(net), dtype, device, compiled=mode is not None,
                                cudagraphs=mode == "reduce-overhead"))
    return variants


# aten operators that only make a view or read metadata/host scalars: they start no kernel on a GPU
NO_KERNEL = {"aten::" + name for name in (
    "alias", "as_strided", "detach", "detach_", "expand", "item", "_local_scalar_dense", "lift_fresh", "narrow",
    "permute", "reshape", "select", "slice", "squeeze", "t", "transpose", "unsqueeze", "unfold", "view",
    "_unsafe_view", "broadcast_tensors", "empty", "empty_strided", "new_empty_strided", "resolve_conj",
    "resolve_neg", "is_nonzero")}


def count_launches(v: Variant, x, y) -> tuple[int, int | None]:
    """(compute operators of one step, CUDA kernels or None).

    Compute operators: aten operators started from Python or the autograd engine (not from inside another
    aten operator), less those in NO_KERNEL — roughly the kernel launches the step needs on a GPU.
    """
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if v.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        v.step(x, y)
        sync(v.device)
    events = prof.events()
    ops = sum(1 for e in events if e.name.startswith("aten::") and e.name not in NO_KERNEL
              and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
    kernels = None
    if v.device.type == "cuda":
        kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return ops, kernels


def peak_memory_mib(v: Variant, x, y) -> float:
    """Peak memory of one step above what was allocated when it began, in MiB."""
    if v.device.type == "cuda":
        sync(v.device)
        torch.cuda.reset_peak_memory_stats(v.device)
        before = torch.cuda.memory_allocated(v.device)
        v.step(x, y)
        sync(v.device)
        return (torch.cuda.max_memory_allocated(v.device) - before) / 2 ** 20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        v.step(x, y)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "memory.json"
        with warnings.catch_warnings():  # deprecated for CUDA's memory snapshots; the CPU has no other record
            warnings.simplefilter("ignore", FutureWarning)
            prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    totals = [sum(row) for row in sizes]
    return (max(totals) - totals[0]) / 2 ** 20


def step_flops(v: Variant, x, y) -> int:
    with FlopCounterMode(display=False) as counter:
        v.step(x, y)
    return counter.get_total_flops()


def max_rel_difference(a: Variant, b: Variant, x, y) -> float:
    """Largest max|b − a| / max|a| over the output and every parameter gradient of one forward+backward."""
    worst = 0.0
    outs, grads = [], []
    for v in (a, b):
        v.optimizer.zero_grad(set_to_none=True)
        out = v.forward(v.net, x)
        F.mse_loss(out, y).backward()
        outs.append(out.detach())
        grads.append([p.grad for p in v.net.parameters()])
        v.optimizer.zero_grad(set_to_none=True)
    for ta, tb in [(outs[0], outs[1]), *zip(*grads)]:
        worst = max(worst, float((tb - ta).abs().max() / ta.abs().max()))
    return worst


def fmt_range(values, scale=1.0, digits=0) -> str:
    return f"{min(values) * scale:.{digits}f}–{max(values) * scale:.{digits}f}"


def bench_device(args, device: torch.device) -> dict:
    n, batch = args.size, args.batch
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, n, n, generator=gen).to(device)
    y = torch.randn(batch, n, n, generator=gen).to(device)
    variants = make_variants(args, device)
    old, new = variants[0], variants[1]
    rel = max_rel_difference(old, new, x, y)  # before any step: both hold the same weights

    peak32 = [matmul_gflops(device, torch.float32)]
    peak16 = [matmul_gflops(device, torch.bfloat16)] if args.bf16 else []
    for v in variants:  # warm-up; for compiled variants the first call compiles
        t0 = time.perf_counter()
        v.step(x, y)
        sync(device)
        v.first_call_s = time.perf_counter() - t0
        v.step(x, y)
    for _ in range(args.rounds):
        for v in variants:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                v.step(x, y)
            sync(device)
            v.times.append((time.perf_counter() - t0) / args.steps)
        peak32.append(matmul_gflops(device, torch.float32, repeats=2))
        if args.bf16:
            peak16.append(matmul_gflops(device, torch.bfloat16, repeats=2))

    flops = step_flops(new, x, y)
    rows = []
    for v in variants:
        launches, kernels = count_launches(v, x, y)
        memory = peak_memory_mib(v, x, y) if args.memory else None
        med = statistics.median(v.times)
        roof = max(peak16 if v.amp_dtype is not None else peak32)  # other jobs only ever lower it
        ratios = [o / t for o, t in zip(old.times, v.times)]
        rows.append(dict(variant=v.name, ms_median=med * 1e3, ms_min=min(v.times) * 1e3, ms_max=max(v.times) * 1e3,
                         samples_per_s=batch / med, ratio_vs_old=statistics.median(old.times) / med,
                         ratio_min=min(ratios), ratio_max=max(ratios), gflops=flops / med / 1e9,
                         roofline=flops / med / 1e9 / roof, launches=launches, cuda_kernels=kernels,
                         peak_mib=memory, first_call_s=v.first_call_s))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{name}: {flops / 1e9:.2f} GFLOP per step (forward + backward, FlopCounterMode); roofline: "
          f"fp32 matmul {max(peak32):.0f} GFLOP/s"
          + (f", bf16 matmul {max(peak16):.0f} GFLOP/s" if peak16 else "")
          + f" (best of {len(peak32)}, one before and one in each round; range {fmt_range(peak32)}"
          + (f" and {fmt_range(peak16)}" if peak16 else "") + f"); {args.rounds} rounds × {args.steps} steps")
    print(f"new vs old, fp32, one forward + backward from the same weights: max relative difference {rel:.1e} "
          f"(output and every gradient)")
    header = (f"{'variant':18} {'ms/step':>8} {'min–max':>11} {'samples/s':>10} {'vs old':>7} {'per round':>11} "
              f"{'GFLOP/s':>8} {'roofline':>9} {'launches':>9} {'peak MiB':>9} {'1st step s':>10}")
    print(header)
    for r in rows:
        launches = f"{r['launches']}" + (f"/{r['cuda_kernels']}" if r["cuda_kernels"] is not None else "")
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "–"
        print(f"{r['variant']:18} {r['ms_median']:8.0f} {r['ms_min']:5.0f}–{r['ms_max']:<5.0f} "
              f"{r['samples_per_s']:10.1f} {r['ratio_vs_old']:6.2f}× {r['ratio_min']:5.2f}–{r['ratio_max']:<5.2f} "
              f"{r['gflops']:8.1f} {r['roofline']:8.1%} {launches:>9} {peak:>9} {r['first_call_s']:10.1f}")
    if any(v.compiled for v in variants) and device.type == "cpu":
        print("(compiled variants: launches count only the aten operators left outside inductor's kernels)")
    return dict(device=name, gflop_per_step=flops / 1e9, fp32_matmul_gflops=peak32, bf16_matmul_gflops=peak16,
                max_rel_difference=rel, rows=rows)


def bf16_training(args, device: torch.device) -> dict:
    """fp32 against bf16 autocast: the same student, data and steps on a synthetic teacher task."""
    n, alpha, batch = args.train_size, args.train_alpha, args.batch
    gen = torch.Generator().manual_seed(5)
    x_train = torch.randn(32 * batch, n, n, generator=gen).to(device)
    x_val = torch.randn(8 * batch, n, n, generator=gen).to(device)
    torch.manual_seed(123)
    teacher = BCRNet((n, n), (n, n), alpha=alpha).to(device)
    with torch.no_grad():
        y_train, y_val = teacher(x_train), teacher(x_val)
        scale = y_train.std()
        y_train, y_val = y_train / scale, y_val / scale
    torch.manual_seed(0)
    student = BCRNet((n, n), (n, n), alpha=alpha).to(device)
    cfg = TrainConfig()
    runs = {}
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        net = copy.deepcopy(student)
        runs[label] = Variant(label, net, lambda m, v: m(v), make_optimizer(cfg, net.parameters(), LR), dtype,
                              device)
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(6))
    for step in range(args.train_steps):
        idx = order[(step * batch) % len(x_train):][:batch]
        for v in runs.values():
            sync(device)
            t0 = time.perf_counter()
            v.step(x_train[idx], y_train[idx])
            sync(device)
            v.times.append(time.perf_counter() - t0)
    result = {}
    print(f"\nbf16 autocast vs fp32 training ({device.type}): α = {alpha}, {n}×{n}, batch {batch}, "
          f"{args.train_steps} NAdam steps at lr {LR:g} on {len(x_train)} samples; targets = a random BCR-Net "
          f"(teacher) scaled to unit variance; relative error ‖pred − y‖/‖y‖ in fp32")
    print(f"{'precision':10} {'train rel. err':>15} {'val rel. err':>13} {'ms/step':>8}")
    for label, v in runs.items():
        with torch.no_grad():
            errs = [float((v.net(xs) - ys).norm() / ys.norm()) for xs, ys in ((x_train, y_train), (x_val, y_val))]
        ms = statistics.median(v.times[1:]) * 1e3
        result[label] = dict(train_rel_err=errs[0], val_rel_err=errs[1], ms_per_step=ms)
        print(f"{label:10} {errs[0]:15.4f} {errs[1]:13.4f} {ms:8.0f}")
    return result


def cpu_description() -> str:
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{model or 'unknown CPU'} ({os.cpu_count()} cores; {' '.join(isa) or 'no AVX2'})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128, help="Ns = Nd = Nt = Nr")
    p.add_argument("--alpha", type=int, default=40)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=2, help="steps per variant and round")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--no-old-bf16", dest="old_bf16", action="store_false",
                   help="skip the old path under bf16 autocast (slow on CPU)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory profile")
    p.add_argument("--train-steps", type=int, default=0, help="bf16-vs-fp32 training steps (0: skip)")
    p.add_argument("--train-size", type=int, default=64)
    p.add_argument("--train-alpha", type=int, default=16)
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    devices = [d for d in ("cpu", "cuda") if args.device in ("all", d)]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            print("bench_model: error: --device cuda but CUDA is not available", file=sys.stderr)
            return 2
        devices.remove("cuda")
    n = args.size
    print(f"BCR-Net α = {args.alpha}, {n}×{n} → {n}×{n}, batch {args.batch}, fp32 weights, MSE + backward + "
          f"NAdam; torch {torch.__version__}, {torch.get_num_threads()} CPU threads; {cpu_description()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    results = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "devices": []}
    for name in devices:
        device = torch.device(name)
        results["devices"].append(bench_device(args, device))
        if args.train_steps:
            results["devices"][-1]["bf16_training"] = bf16_training(args, device)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
