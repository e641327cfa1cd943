#!/usr/bin/env python
"""Checkpoint sizes of the study's networks at the study's size, and what a Born layer costs to rebuild.

    python tools/bench_checkpoint.py [--size 100] [--out DIR]

Builds CNN, CNNB, the study's BCNN and NIO at their defaults for a far field of SIZE × SIZE directions and a
SIZE × SIZE image (the study: 100; the grid of its data: nodes of [−1, 1]², the endpoint direction grid,
κ = 16, the port's sign convention), gives the two Born-based networks their damped least-squares layer
(`BornDefinition`, damp 0.1 and 1), writes each as a model checkpoint (`save_model`) and loads it back
(`load_model`, which rebuilds the Born layer from its definition). Prints, per network: parameters, checkpoint
bytes, the bytes of the non-persistent Born tensors that the checkpoint does not carry, and the seconds to build
the Born layer from its definition, to write and to load (the grid's decomposition is cached in the process:
the first Born network pays for it, the next one and the loads only for their damping). For comparison: the dense reconstruction matrix a checkpoint would carry if the layer were stored
as a matrix (H·W × 2·n_obs·n_inc float32).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import bcrdist
from bcrdist.models import network_class
from bcrdist.models.checkpoint import save_model
from bcrdist.models.registry import NetworkIO
from bcrdist.models.scattering import ScatteringModel
from bcrdist.physics.born_definition import BornDefinition
from bcrdist.physics.layout import GridInfo

NETWORKS = ("cnn", "cnnb", "study_bcnn", "nio")


def study_grid(size: int) -> GridInfo:
    return GridInfo(k=16.0, angles="endpoint", n_obs=size, n_inc=size, target="cartesian", image_size=size,
                    image_extent=2.0, image_points="nodes", image_index="xy", farfield_sign=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100, help="directions and pixels per axis (the study: 100)")
    parser.add_argument("--out", help="folder for the checkpoints (default: a temporary one)")
    args = parser.parse_args()
    n = args.size
    io = NetworkIO(n_input=(n, 2 * n), n_output=(n, n), parts="complex", target_kind="cartesian", periodic=False)
    grid = study_grid(n)
    dense = n * n * 2 * n * n * 4
    print(f"size {n}: far field {n}×{n} directions, image {n}×{n}; a dense reconstruction matrix would be "
          f"{dense / 2**20:,.0f} MiB in float32")
    print(f"{'network':<11} {'parameters':>11} {'checkpoint':>12} {'Born tensors':>13} {'build s':>8} {'write s':>8} "
          f"{'load s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        for name in NETWORKS:
            cls = network_class(name)
            config = cls.resolve(None, io)
            net = cls(**config)
            request = cls.born_request(None, config)
            born_bytes, built = 0, 0.0
            if request is not None:
                start = time.perf_counter()
                net.set_born(BornDefinition(grid, request["method"], request["damp"]), {"damp": request["damp"]})
                built = time.perf_counter() - start
                born_bytes = sum(b.numel() * b.element_size() for b in net.born.buffers())
            model = ScatteringModel(net, antipodal=False, use_imag=True, input="farfield.real", target="image")
            path = out / f"{name}.pt"
            start = time.perf_counter()
            save_model(path, model)
            written = time.perf_counter() - start
            start = time.perf_counter()
            loaded = bcrdist.load_model(path)
            load_s = time.perf_counter() - start
            params = sum(p.numel() for p in loaded.parameters())
            assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
            print(f"{name:<11} {params:>11,} {path.stat().st_size / 2**20:>9.1f} MiB {born_bytes / 2**20:>9.1f} MiB "
                  f"{built:>8.2f} {written:>8.2f} {load_s:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
