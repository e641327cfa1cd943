"""Shared by the physics and generation tests: a tiny generation config, writing configs and reading a
generated data set back, and the demo-tier Gaussian configs of the Born-baseline tests."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import yaml

from bcrdist.physics.generation_config import FamilyConfig, GaussianFamily, GenerationConfig

TINY = {
    "n": 16, "box": 1.0, "k_over_pi": 2.0, "Na": 8, "Nr": 4, "samples": 6, "samples_per_shard": 2, "seed": 3,
    "family": {"name": "gaussian", "gaussian": {"count": [1, 3], "width": [0.08, 0.1], "tail_sigmas": 3.5}},
}
DATASETS = {"measure": ((8, 4), "float32"), "measure_imag": ((8, 4), "float32"), "coe": ((8, 4), "float32"),
            "eta": ((16, 16), "float32"), "farfield": ((8, 8), "complex64"), "family": ((), "int32"),
            "num_primitives": ((), "int32"), "primitives": ((3, 7), "float64"), "iterations": ((), "int32"),
            "residual": ((), "float32")}

K = 4 * np.pi          # the demo tier: n = 32, k = 4π, Na = 32, Nr = 16, polar radius 0.5
NA, NR, RADIUS = 32, 16, 0.5


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def read_dataset(out: Path) -> dict[str, np.ndarray]:
    manifest = json.loads((out / "manifest.json").read_text())
    parts: dict[str, list] = {}
    for shard in manifest["shards"]:
        with h5py.File(out / shard["file"], "r") as fh:
            for name in fh:
                parts.setdefault(name, []).append(fh[name][...])
    return {name: np.concatenate(p) for name, p in parts.items()}


def demo_gaussian_config(amplitude, samples, **kw) -> GenerationConfig:
    """The demo tier with 1–3 wide Gaussian bumps of the given amplitude range."""
    gauss = GaussianFamily(count=(1, 3), amplitude=amplitude, width=(0.08, 0.1), tail_sigmas=3.5)
    return GenerationConfig(n=32, k_over_pi=4.0, Na=NA, Nr=NR, polar_radius=RADIUS, samples=samples, seed=5,
                            family=FamilyConfig(gaussian=gauss), **kw)
