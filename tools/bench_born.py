"""The networks' Born layer (`bcrdist.models.born_layers.BornReconstruction`) at the study's size: today's
right-hand side, made a cache-sized piece of T = parts @ inc_factor at a time, against the whole product the
layer computed before (written out below), interleaved in one process.

    .venv/bin/python tools/bench_born.py [--size 100] [--batch 32] [--damp 0.1] [--rounds 7] [--threads N]

The layer is built on the study's grid (nodes of [−1, 1]², `--size`² pixels, `--size` directions on the
endpoint grid, κ = 16, damped LSQR), in float64 as the networks use it (`BORN_PRECISION`). Per round, both
forms run the forward of a batch, then forward + backward (the backward as CNNB needs it, its far field
carrying a gradient), the order alternating every round. It prints the median milliseconds of each, the ratio
whole ÷ pieces (of the medians, and the range of the per-round ratios), the arithmetic rate of the right-hand
side's products against the float64 matmul roofline measured in the same run, and whether the two forms agree
bit for bit (forward output and the far field's gradient).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bcrdist.models import born_layers
from bcrdist.models.born_layers import BORN_PRECISION, BornReconstruction
from bcrdist.physics.born_definition import BornDefinition
from bcrdist.physics.layout import GridInfo


def whole_product(layer: BornReconstruction, x: torch.Tensor) -> torch.Tensor:
    """The layer's right-hand side as it was computed before the pieces: the (samples, n_obs, 2P) product whole,
    `TRANSIENT_FLOATS` elements of it at a time, autograd's derivative."""
    samples = max(1, born_layers.TRANSIENT_FLOATS // layer.obs_factor.numel())
    return torch.cat([((part @ layer.inc_factor) * layer.obs_factor).sum(1) for part in x.split(samples)])


def pieces(layer: BornReconstruction, x: torch.Tensor) -> torch.Tensor:
    return born_layers._RightHandSide.apply(x, layer.inc_factor, layer.obs_factor)


def float64_roofline(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=torch.float64), torch.randn(n, n, dtype=torch.float64)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=100, help="pixels per side and directions (default 100)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--damp", type=float, default=0.1, help="LSQR damping (CNNB's 0.1; the study's BCNN: 1)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = GridInfo(k=16.0, angles="endpoint", n_obs=args.size, n_inc=args.size, target="cartesian",
                    image_size=args.size, image_extent=2.0, image_points="nodes", image_index="xy",
                    farfield_sign=1)
    layer = BornReconstruction((args.size, 2 * args.size), (args.size, args.size), precision=BORN_PRECISION)
    t0 = time.perf_counter()
    layer.set_definition(BornDefinition(grid, "lsqr", args.damp))
    print(f"Born layer: {args.size}² pixels, {args.size} × {args.size} directions, lsqr damp {args.damp}, "
          f"{BORN_PRECISION}, built in {time.perf_counter() - t0:.1f} s; batch {args.batch}, "
          f"{torch.get_num_threads()} threads")
    x = torch.randn(args.batch, args.size, 2 * args.size, generator=torch.Generator().manual_seed(0),
                    dtype=layer.inc_factor.dtype)
    g = torch.randn(args.batch, layer.obs_factor.shape[1], generator=torch.Generator().manual_seed(1),
                    dtype=x.dtype)

    forms = {"whole": whole_product, "pieces": pieces}
    outputs, grads = {}, {}
    for name, form in forms.items():
        xg = x.clone().requires_grad_(True)
        outputs[name] = form(layer, xg)
        (outputs[name] * g).sum().backward()
        grads[name] = xg.grad

    def forward(form):
        with torch.no_grad():
            form(layer, x)

    def train(form):
        xg = x.clone().requires_grad_(True)
        (form(layer, xg) * g).sum().backward()

    times = {(kind, name): [] for kind in ("forward", "forward + backward") for name in forms}
    roofline = [float64_roofline()]
    for r in range(args.rounds):
        order = list(forms) if r % 2 == 0 else list(reversed(forms))
        for kind, run in (("forward", forward), ("forward + backward", train)):
            for name in order:
                times[(kind, name)].append(timed(lambda: run(forms[name])))
        roofline.append(float64_roofline(repeats=2))
    peak = max(roofline)
    flop = 2 * layer.inc_factor.numel() * layer.obs_factor.shape[0] * args.batch   # the forward's product
    print(f"float64 matmul roofline {peak:.0f} GFLOP/s (best of {len(roofline)}); {args.rounds} rounds, "
          f"order alternating")
    print(f"{'':20} {'whole ms':>10} {'pieces ms':>10} {'whole/pieces':>13} {'per round':>13} "
          f"{'pieces GFLOP/s':>15} {'roofline':>9}")
    for kind, passes in (("forward", 1), ("forward + backward", 2)):
        whole, piece = times[(kind, "whole")], times[(kind, "pieces")]
        ratios = [a / b for a, b in zip(whole, piece)]
        rate = passes * flop / statistics.median(piece) / 1e9
        print(f"{kind:20} {1e3 * statistics.median(whole):10.1f} {1e3 * statistics.median(piece):10.1f} "
              f"{statistics.median(whole) / statistics.median(piece):12.2f}× "
              f"{min(ratios):6.2f}–{max(ratios):.2f} {rate:15.1f} {rate / peak:8.1%}")
    print(f"bit for bit: forward {'equal' if torch.equal(outputs['whole'], outputs['pieces']) else 'DIFFERENT'}, "
          f"gradient {'equal' if torch.equal(grads['whole'], grads['pieces']) else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
