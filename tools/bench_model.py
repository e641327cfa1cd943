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

    python tools/bench_model.py --network NAME[,NAME…|all] [--size 100] [--batch 32] [--rounds 3] [--steps 1]
                                [--alpha A] [--precision fp32,bf16] [--profile K] [--device cpu]

`--network` measures the train step of registered networks (`bcrdist config networks`) at the study's shape
instead: input the SIZE × SIZE far field (its real part for BCR-Net, as the study's; Re and Im concatenated for
the others), a SIZE × SIZE image target on the study's grid (nodes of [−1, 1]², κ = 16), each network at the
study's sizes (BCR-Net: bcrdist/configs/study_full_bcrnet.yaml, α = 128, N_cnn 6, N_cnn3 5, L = 2, zero padding,
or `--alpha`; the others: their defaults, the study's at 100 × 100), inside `ScatteringModel` with the trainer's
optimizer (NAdam), fp32 (`--precision fp32,bf16`: also under bf16 autocast, as `runtime.precision: bf16-mixed`
trains, each precision its own copy of the network), MSE on the output, freed host memory kept for reuse as the
trainer keeps it on the CPU (`--host-memory release`: the C library's defaults). A Born-based network gets its
damped least-squares layer (cnnb, study_bcnn) or a Tikhonov layer of fixed λ (bcnn: the run would choose λ on
validation; the cost does not depend on it). The networks take turns as the variants above; per network it prints
the parameters, GFLOP per sample of a train step (forward + backward by FlopCounterMode, counted on two and four
samples and extended to the batch; a Born layer's products included), ms per sample (median of the rounds,
min–max), the arithmetic rate and its fraction of the matmul roofline of its precision (fp32 or bf16) measured in
the same run. `--profile K` then profiles one step of each network (torch.profiler, CPU) and prints its K
operators of largest self time, with their input shapes.
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
from bcrdist.config import load_config  # noqa: E402
from bcrdist.errors import ConfigError  # noqa: E402
from bcrdist.models import BCRNet, network_class, network_names  # noqa: E402
from bcrdist.models.bcrnet import resolve_levels  # noqa: E402
from bcrdist.models.registry import NetworkIO  # noqa: E402
from bcrdist.models.scattering import ScatteringModel  # noqa: E402
from bcrdist.physics.born_definition import BornDefinition  # noqa: E402
from bcrdist.physics.layout import GridInfo  # noqa: E402
from bcrdist.train.config import TrainConfig  # noqa: E402
from bcrdist.train.optim import make_optimizer  # noqa: E402
from bcrdist.train.process_setup import keep_freed_memory  # noqa: E402

LR = 1e-3
# the packaged training configs of networks whose study sizes are not their defaults
STUDY_CONFIGS = {"bcrnet": "study_full_bcrnet.yaml"}
# --precision of the network mode: the autocast dtype of the step and the dtype of its matmul roofline
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16}
MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BCNN_LAMBDA = 1e-2  # bcrdist's BCNN: a fixed Tikhonov λ (a run fits it on validation; the step's cost is the same)


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
    levels = resolve_levels(n, None, padded=False)  # 100 → 2, as the study's BCR-Net
    torch.manual_seed(123)
    teacher = BCRNet((n, n), (n, n), alpha=alpha, levels=levels).to(device)
    with torch.no_grad():
        y_train, y_val = teacher(x_train), teacher(x_val)
        scale = y_train.std()
        y_train, y_val = y_train / scale, y_val / scale
    torch.manual_seed(0)
    student = BCRNet((n, n), (n, n), alpha=alpha, levels=levels).to(device)
    cfg = TrainConfig()
    runs = {}
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        net = copy.deepcopy(student)
        runs[label] = Variant(label, net, lambda m, v: m(v), make_optimizer(cfg, net.parameters(), LR), dtype,
                              device)
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(6))
    losses = {label: [] for label in runs}
    for step in range(args.train_steps):
        idx = order[(step * batch) % len(x_train):][:batch]
        for label, v in runs.items():
            sync(device)
            t0 = time.perf_counter()
            losses[label].append(v.step(x_train[idx], y_train[idx]))
            sync(device)
            v.times.append(time.perf_counter() - t0)
    result = {}
    print(f"\nbf16 autocast vs fp32 training ({device.type}): α = {alpha}, L = {levels}, {n}×{n}, batch {batch}, "
          f"{args.train_steps} NAdam steps at lr {LR:g} on {len(x_train)} samples; targets = a random BCR-Net "
          f"(teacher) scaled to unit variance; relative error ‖pred − y‖/‖y‖ in fp32")
    print(f"{'precision':10} {'train rel. err':>15} {'val rel. err':>13} {'ms/step':>8}")
    for label, v in runs.items():
        with torch.no_grad():
            errs = [float((v.net(xs) - ys).norm() / ys.norm()) for xs, ys in ((x_train, y_train), (x_val, y_val))]
        ms = statistics.median(v.times[1:]) * 1e3
        result[label] = dict(train_rel_err=errs[0], val_rel_err=errs[1], ms_per_step=ms)
        print(f"{label:10} {errs[0]:15.4f} {errs[1]:13.4f} {ms:8.0f}")
    # the loss curves: mean training loss (MSE, computed in fp32) over ten equal windows of the steps
    windows = [range(i * args.train_steps // 10, (i + 1) * args.train_steps // 10) for i in range(10)]
    windows = [w for w in windows if len(w)]
    curves = {label: [float(torch.stack([loss[i] for i in w]).mean()) for w in windows]
              for label, loss in losses.items()}
    print(f"training loss, mean over windows of {len(windows[0])} steps (steps: end of window)")
    print(f"{'steps':>6} {'fp32':>10} {'bf16':>10} {'bf16/fp32':>10}")
    for w, a, b in zip(windows, curves["fp32"], curves["bf16"]):
        print(f"{w[-1] + 1:6} {a:10.4f} {b:10.4f} {b / a:10.3f}")
    for label in runs:
        result[label]["loss_curve"] = curves[label]
    return result


def study_grid(n: int) -> GridInfo:
    """The study's grid at n × n: far field on the endpoint direction grid, image at the nodes of [−1, 1]²."""
    return GridInfo(k=16.0, angles="endpoint", n_obs=n, n_inc=n, target="cartesian", image_size=n,
                    image_extent=2.0, image_points="nodes", image_index="xy", farfield_sign=1)


def study_model(name: str, n: int, alpha: int | None) -> tuple[ScatteringModel, TrainConfig, tuple[int, int]]:
    """Network `name` at the study's sizes for an n × n far field and an n × n image, inside ScatteringModel
    (as the trainer runs it: a Born layer gets its units), its training config and its input shape (n, n) or
    (n, 2n)."""
    overrides = [f"model.type={name}"] + ([f"model.alpha={alpha}"] if alpha else [])
    cfg = load_config(STUDY_CONFIGS.get(name), TrainConfig, overrides)
    cls = network_class(name)
    complex_input = cls.input_parts == "complex"
    io = NetworkIO(n_input=(n, 2 * n if complex_input else n), n_output=(n, n),
                   parts="complex" if complex_input else "real", target_kind="cartesian", periodic=False)
    section = getattr(cfg.model, cls.config_section) if cls.config_section else cfg.model
    config = cls.resolve(section, io)
    net = cls(**config)
    request = cls.born_request(section, config)
    if request is not None:
        parameter = request.get("damp") or request.get("lam") or BCNN_LAMBDA
        net.set_born(BornDefinition(study_grid(n), request["method"], parameter, request.get("norm")), {})
    model = ScatteringModel(net, antipodal=False, use_imag=complex_input, input="farfield", target="image")
    return model, cfg, io.n_input


def profile_step(v: Variant, x, y, top: int) -> list[dict]:
    """The `top` operators of largest self CPU time in one step (grouped by name and input shapes)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        v.step(x, y)
    stats = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in stats)
    rows = sorted(stats, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [dict(op=e.key, shapes=str(e.input_shapes)[:90], calls=e.count, self_ms=e.self_cpu_time_total / 1e3,
                 share=e.self_cpu_time_total / total) for e in rows]


def bench_networks(args, device: torch.device) -> dict:
    """The train step of each network of `--network` at the study's shape, interleaved (module docstring)."""
    names = network_names() if args.network == "all" else args.network.split(",")
    n, batch = args.size, args.batch
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(batch, n, n, generator=gen).to(device)
    variants, inputs, flops, params = [], {}, {}, {}
    for name in names:
        shape = None
        for precision in args.precision:
            torch.manual_seed(0)  # every precision starts from the same weights
            model, cfg, shape = study_model(name, n, args.alpha)
            model.to(device)
            v = Variant(name, model, lambda m, x: m(x), make_optimizer(cfg, model.parameters(), LR),
                        AMP_DTYPES[precision], device)
            v.precision = precision
            variants.append(v)
        inputs[name] = torch.randn(batch, *shape, generator=gen).to(device)
        params[name] = sum(p.numel() for p in model.parameters())
        # counted in fp32 on two and four samples and extended to the batch: a step's FLOPs are affine in the
        # batch, not proportional to it (NIO evaluates its trunk on the grid once per step, whatever the batch);
        # this saves a full step per network. The same operations run under bf16 autocast.
        fp32 = Variant(name, model, lambda m, x: m(x), make_optimizer(cfg, model.parameters(), LR), None, device)
        two, four = (step_flops(fp32, inputs[name][:k], y[:k]) for k in (2, 4))
        flops[name] = two + (four - two) * (batch - 2) // 2
    peaks = {precision: [matmul_gflops(device, MATMUL_DTYPES[precision])] for precision in args.precision}
    for v in variants:  # warm-up
        v.step(inputs[v.name], y)
    for _ in range(args.rounds):
        for v in variants:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                v.step(inputs[v.name], y)
            sync(device)
            v.times.append((time.perf_counter() - t0) / args.steps)
        for precision, measured in peaks.items():
            measured.append(matmul_gflops(device, MATMUL_DTYPES[precision], repeats=2))
    roofs = {precision: max(measured) for precision, measured in peaks.items()}  # other jobs only ever lower it
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rooflines = "; ".join(f"{p} matmul roofline {roofs[p]:.0f} GFLOP/s (best of {len(peaks[p])}, range "
                          f"{fmt_range(peaks[p])})" for p in args.precision)
    print(f"\n{name}: train step at {n}×{n} → {n}×{n}, batch {batch}, {' and '.join(args.precision)}, MSE + "
          f"backward + NAdam; {rooflines}, one before and one in each round; {args.rounds} rounds × {args.steps} "
          f"steps, networks interleaved")
    print(f"{'network':11} {'precision':>9} {'parameters':>11} {'input':>9} {'GFLOP/sample':>13} {'ms/sample':>10} "
          f"{'min–max':>13} {'samples/s':>10} {'GFLOP/s':>8} {'roofline':>9}")
    rows = []
    for v in variants:
        med = statistics.median(v.times)
        gflop = flops[v.name] / batch / 1e9
        rate = flops[v.name] / med / 1e9
        rows.append(dict(network=v.name, precision=v.precision, parameters=params[v.name],
                         input=list(inputs[v.name].shape[1:]), gflop_per_sample=gflop, ms_per_sample=med / batch * 1e3,
                         ms_per_sample_min=min(v.times) / batch * 1e3, ms_per_sample_max=max(v.times) / batch * 1e3,
                         samples_per_s=batch / med, gflops=rate, roofline=rate / roofs[v.precision]))
        r = rows[-1]
        shape = "×".join(str(s) for s in r["input"])
        print(f"{r['network']:11} {v.precision:>9} {r['parameters']:>11,} {shape:>9} {gflop:13.3f} "
              f"{r['ms_per_sample']:10.2f} {r['ms_per_sample_min']:6.2f}–{r['ms_per_sample_max']:<6.2f} "
              f"{r['samples_per_s']:10.1f} {rate:8.1f} {r['roofline']:8.1%}")
    result = dict(device=name, matmul_gflops=peaks, rows=rows)
    if args.profile:
        result["profiles"] = {}
        for v in variants:
            top = profile_step(v, inputs[v.name], y, args.profile)
            result["profiles"][f"{v.name} {v.precision}"] = top
            print(f"\n{v.name} ({v.precision}): top {args.profile} operators of one step by self CPU time (share "
                  f"of the step's)")
            for t in top:
                print(f"  {t['op']:42} {t['self_ms']:9.1f} ms {t['share']:6.1%} {t['calls']:5}× {t['shapes']}")
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
    p.add_argument("--size", type=int, default=None,
                   help="Ns = Nd = Nt = Nr (default 128; with --network 100, the study's)")
    p.add_argument("--alpha", type=int, default=None,
                   help="BCR-Net's α (default 40; with --network the study's 128)")
    p.add_argument("--network", default=None,
                   help="registered networks (comma-separated, or 'all') at the study's shape instead of the "
                        "old-vs-new BCR-Net comparison")
    p.add_argument("--precision", default="fp32", metavar="fp32[,bf16]",
                   help="--network: the step in fp32 and/or under bf16 autocast, each against its matmul roofline")
    p.add_argument("--host-memory", choices=["keep", "release"], default="keep",
                   help="--network: freed host memory kept for reuse (the trainer's default on the CPU, "
                        "runtime.host_memory) or the C library's defaults")
    p.add_argument("--profile", type=int, default=0, metavar="K",
                   help="with --network: the K operators of largest self time in one step of each network")
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
    if args.network is not None:
        for name in ([] if args.network == "all" else args.network.split(",")):
            try:
                network_class(name, "--network")
            except ConfigError as exc:
                print(f"bench_model: error: {exc}", file=sys.stderr)
                return 2
        args.size = args.size or 100
        args.precision = args.precision.split(",")
        unknown = [p for p in args.precision if p not in AMP_DTYPES]
        if unknown or not args.precision:
            print(f"bench_model: error: --precision: expected fp32, bf16 or both (comma-separated), got "
                  f"{','.join(args.precision)!r}", file=sys.stderr)
            return 2
        if args.host_memory == "keep":
            keep_freed_memory()
    else:
        args.size, args.alpha = args.size or 128, args.alpha or 40
    n = args.size
    what = f"networks {args.network}" if args.network is not None else f"BCR-Net α = {args.alpha}"
    if args.network is not None:
        what += f" (freed host memory: {args.host_memory})"
    print(f"{what}, {n}×{n} → {n}×{n}, batch {args.batch}, fp32 weights, MSE + backward + "
          f"NAdam; torch {torch.__version__}, {torch.get_num_threads()} CPU threads; {cpu_description()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    results = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "devices": []}
    for name in devices:
        device = torch.device(name)
        if args.network is not None:
            try:
                results["devices"].append(bench_networks(args, device))
            except ConfigError as exc:  # a size a network cannot take
                print(f"bench_model: error: {exc}", file=sys.stderr)
                return 2
            continue
        results["devices"].append(bench_device(args, device))
        if args.train_steps:
            results["devices"][-1]["bf16_training"] = bf16_training(args, device)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
