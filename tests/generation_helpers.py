"""Shared by the physics and generation tests: a tiny generation config, writing configs and reading a
generated data set back, a plain single-process run against `mpiexec -n 2 bcrdist generate`, and the demo-tier
Gaussian configs of the Born-baseline tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# what makes bcrdist take a process for one rank of an MPI launch or a Slurm step
LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS",
                 "BCRDIST_MPI")


def as_plain_process(monkeypatch) -> None:
    """This test process as a plain run: no launcher variables, and mpi4py unimportable (a plain run must not
    initialise MPI)."""
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(sys.modules, "mpi4py", None)


def mpiexec_generate(config: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    """`mpiexec -n 2 bcrdist generate --config CONFIG --out OUT --quiet ARGS`, in this environment less the
    launcher variables of the test process."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    return subprocess.run([str(VENV_BIN / "mpiexec"), "-n", "2", sys.executable, "-m", "bcrdist", "generate",
                           "--config", str(config), "--out", str(out), "--quiet", *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


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
