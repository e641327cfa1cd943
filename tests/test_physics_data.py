"""The data layout, scatterer families, config validation and the (MPI-parallel) generator."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from bcrdist.cli import main as cli_main
from bcrdist.transforms import antipodal
from bcrdist.config import load_config
from bcrdist.errors import ConfigError, DataError
from bcrdist.data.generate import generate
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.physics.sampling import SampleMaker
from bcrdist.physics.layout import measure_from_far_field, polar_grid
from bcrdist.physics.scatterers import sample_gaussian, sample_shapes, sample_shepp_logan
from bcrdist.physics.solver import ConvergenceError

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

TINY = {
    "n": 16, "box": 1.0, "k_over_pi": 2.0, "Na": 8, "Nr": 4, "samples": 6, "samples_per_shard": 2, "seed": 3,
    "family": {"name": "gaussian", "gaussian": {"count": [1, 3], "width": [0.08, 0.1], "tail_sigmas": 3.5}},
}
DATASETS = {"measure": ((8, 4), "float32"), "measure_imag": ((8, 4), "float32"), "coe": ((8, 4), "float32"),
            "eta": ((16, 16), "float32"), "farfield": ((8, 8), "complex64"), "family": ((), "int32"),
            "num_primitives": ((), "int32"), "primitives": ((3, 7), "float64"), "iterations": ((), "int32")}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def test_measure_layout_and_polar_grid():
    na = 8
    f = np.arange(na)[:, None] * 100 + np.arange(na)[None, :]  # F[obs, src] = 100·obs + src
    m = measure_from_far_field(f)
    assert m.shape == (na, na // 2)
    for i in range(na):
        for j in range(na // 2):
            assert m[i, j] == f[(i + j) % na, (i - j) % na]
    # shifting both angles by one step (a rotation of the scatterer) rolls the rows of measure by one
    assert np.array_equal(measure_from_far_field(np.roll(f, 1, axis=(0, 1))), np.roll(m, 1, axis=0))
    theta, rho = polar_grid(4, 2, 0.5)
    assert np.allclose(theta, [0, np.pi / 2, np.pi, 3 * np.pi / 2]) and np.allclose(rho, [0.125, 0.375])


@pytest.mark.parametrize("family", ["gaussian", "shapes", "shepp_logan"])
def test_families_nonnegative_inside_support(family):
    maker = SampleMaker(load_config(None, GenerationConfig, ["n=32", f"family.name={family}"]))
    x = np.linspace(-0.5, 0.5, 201)
    for index in range(5):
        s = maker.scatterer(index)
        values = s(x[:, None], x[None, :])
        assert values.min() >= 0 and values.max() > 0
        assert np.all(values[np.hypot(x[:, None], x[None, :]) > 0.45] == 0)
        raster = s.raster(32, 1.0, 8)
        assert raster.shape == (32, 32) and raster.min() >= 0
        assert np.array_equal(s.polar(8, 4, 0.5), s.rotated(0.0).polar(8, 4, 0.5))


def test_area_fraction_raster_of_polygon():
    s = sample_shapes(np.random.default_rng(5), count=(1, 1), contrast=(1.0, 1.0), size=(0.2, 0.2),
                      polygon_fraction=1.0, vertices=(5, 5), gap=0.0, support_radius=0.45)
    row = s.primitives[0]
    vx, vy = row[7:17:2], row[8:17:2]
    area = 0.5 * abs(np.dot(vx, np.roll(vy, -1)) - np.dot(vy, np.roll(vx, -1)))  # shoelace
    n = 64
    assert abs(s.raster(n, 1.0, 16).sum() / n ** 2 - area) < 2e-3 * area
    assert abs(s.raster(n, 1.0, 1).sum() / n ** 2 - area) > abs(s.raster(n, 1.0, 16).sum() / n ** 2 - area)


def test_families_depend_on_seed_only():
    a = sample_gaussian(np.random.default_rng([1, 2]), count=(2, 5), amplitude=(0.1, 0.2), width=(0.03, 0.05),
                        tail_sigmas=4.0, support_radius=0.45)
    b = sample_gaussian(np.random.default_rng([1, 2]), count=(2, 5), amplitude=(0.1, 0.2), width=(0.03, 0.05),
                        tail_sigmas=4.0, support_radius=0.45)
    assert np.array_equal(a.primitives, b.primitives)
    c = sample_shepp_logan(np.random.default_rng(0), contrast=(0.3, 0.3), jitter=0.05, support_radius=0.45)
    assert c(0.0, 0.0) >= 0 and c.primitives.shape == (10, 7)


def test_rotation_by_one_step_rolls_coe_and_preprocessed_measure():
    cfg = load_config(None, GenerationConfig, ["n=64", "Na=32", "Nr=8", "family.gaussian.width=[0.045, 0.06]",
                                         "solver.tol=1.0e-11"])
    maker = SampleMaker(cfg)
    s = maker.scatterer(7)
    a = maker.arrays(s)
    b = maker.arrays(s.rotated(2 * np.pi / cfg.Na))
    assert np.allclose(b["coe"], np.roll(a["coe"], 1, axis=0), rtol=0, atol=1e-6 * a["coe"].max())
    pa = antipodal(a["measure"] + 1j * a["measure_imag"])
    pb = antipodal(b["measure"] + 1j * b["measure_imag"])
    err = np.linalg.norm(pb - np.roll(pa, 1, axis=0)) / np.linalg.norm(pa)
    print(f"rotation by 2π/Na: preprocessed measure rolls by one row to {err:.1e}")
    assert err < 1e-6


@pytest.mark.parametrize("override, key", [
    (["colour=red"], "unknown key 'colour'"),
    (["Na=30"], "Na: must be a positive multiple of 4"),
    (["n=sixteen"], "n: expected an integer"),
    (["family.name=circles"], "family.name: expected one of"),
    (["family.gaussian.width=[0.2, 0.1]"], "width: lower bound 0.2 exceeds upper bound 0.1"),
    (["family.gaussian.width=[0.1, 0.2]"], "gaussian.width: tail_sigmas"),
    (["solver.tol=2"], "tol: must lie in (0, 1)"),
])
def test_bad_config_is_one_line_error_naming_file_and_key(tmp_path, capsys, override, key):
    path = write_config(tmp_path / "bad.yaml", TINY)
    with pytest.raises(ConfigError) as info:
        load_config(path, GenerationConfig, override)
    assert str(path) in str(info.value) and key in str(info.value)
    assert cli_main(["generate", "--config", str(path), "--out", str(tmp_path / "out"), "--quiet",
                     *sum((["--set", o] for o in override), [])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and key in err and str(path) in err
    assert not (tmp_path / "out").exists()


def test_generate_resume_and_refuse_other_settings(tmp_path, capsys):
    cfg_path = write_config(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "data"
    assert cli_main(["generate", "--config", str(cfg_path), "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 6 and len(manifest["shards"]) == 3
    assert manifest["provenance"]["config"]["seed"] == 3
    data = read_dataset(out)
    for name, (shape, dtype) in DATASETS.items():
        assert data[name].shape == (6, *shape) and data[name].dtype == np.dtype(dtype), name
    f = data["farfield"]
    i, j = np.meshgrid(np.arange(8), np.arange(4), indexing="ij")
    assert np.array_equal(data["measure"], f[:, (i + j) % 8, (i - j) % 8].real)
    assert np.array_equal(data["measure_imag"], f[:, (i + j) % 8, (i - j) % 8].imag)
    assert np.all(data["family"] == 0) and np.all(data["num_primitives"] >= 1)
    assert np.all(data["eta"] >= 0) and np.all(data["iterations"] > 0)

    # an interrupted run: one shard lost; the rerun rewrites it identically and keeps the others
    before = {p.name: p.read_bytes() for p in out.glob("shard-*.h5")}
    (out / "shard-00001.h5").unlink()
    summary = generate(load_config(cfg_path, GenerationConfig), out, progress=False)
    assert summary["written"] == 2  # the two samples of the lost shard
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.h5")} == before

    # other settings: refused, naming the manifest; nothing is touched
    with pytest.raises(DataError, match="manifest.json: the directory holds a data set made with other settings"):
        generate(load_config(cfg_path, GenerationConfig, ["seed=4"]), out, progress=False)
    (out / "manifest.json").unlink()
    with pytest.raises(DataError, match="shard-00000.h5: made with other settings"):
        generate(load_config(cfg_path, GenerationConfig, ["seed=4"]), out, progress=False)
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.h5")} == before


def test_non_convergence_names_the_sample():
    maker = SampleMaker(load_config(None, GenerationConfig, ["n=32", "solver.max_iterations=2"]))
    with pytest.raises(ConvergenceError, match="^sample 5: GMRES did not converge"):
        maker(5)


@pytest.mark.mpi
def test_mpi_two_ranks_write_byte_identical_data(tmp_path, monkeypatch):
    if shutil.which("mpiexec", path=str(VENV_BIN)) is None:
        pytest.skip("mpiexec not installed in the environment")
    cfg_path = write_config(tmp_path / "tiny.yaml", TINY)
    launcher_vars = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "SLURM_NTASKS",
                     "SLURM_STEP_NUM_TASKS", "BCRDIST_MPI")
    for var in launcher_vars:
        monkeypatch.delenv(var, raising=False)
    # P = 1 in this process, two threads (the ranks below use one each), with mpi4py made unimportable:
    # a plain run must not initialise MPI
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    generate(load_config(cfg_path, GenerationConfig), tmp_path / "p1", threads=2, progress=False)
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars}
    two = subprocess.run([str(VENV_BIN / "mpiexec"), "-n", "2", sys.executable, "-m", "bcrdist", "generate",
                          "--config", str(cfg_path), "--out", str(tmp_path / "p2"), "--quiet"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr
    m1 = json.loads((tmp_path / "p1" / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "p2" / "manifest.json").read_text())
    assert m1 == m2  # same shard checksums, same provenance
    for shard in m1["shards"]:
        assert (tmp_path / "p1" / shard["file"]).read_bytes() == (tmp_path / "p2" / shard["file"]).read_bytes()
