"""The torch backend of the Lippmann–Schwinger solver (`bcrdist.physics.solver_torch`) against the NumPy backend
(`solver.ScatteringSolver`) and the Mie series, its generation path (`solver.backend: torch`, `solver.batch`,
`bcrdist generate --device`) and its refusals. Everything runs on the CPU; tools/gpu_check.sh runs the same
comparisons on a GPU."""

import json
import shutil

import numpy as np
import pytest
import torch

from bcrdist.cli import main as cli_main
from bcrdist.config import load_config
from bcrdist.data.generate import generate
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.physics.sampling import SampleMaker
from bcrdist.physics.scatterers import KIND_ELLIPSE, Scatterer
from bcrdist.physics.solver import ConvergenceError, ScatteringSolver
from bcrdist.physics.solver_torch import TorchScatteringSolver
from generation_helpers import TINY, VENV_BIN, as_plain_process, mpiexec_generate, read_dataset, write_config
from scattering_reference import mie_far_field

K = 8 * np.pi

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def angles(na):
    return 2 * np.pi * np.arange(na) / na


def rel_max(a, b):
    """Largest entry-wise difference relative to the largest entry of the reference."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def config(family: dict, **solver) -> GenerationConfig:
    data = {"n": 32, "k_over_pi": 4.0, "Na": 16, "Nr": 4, "samples": 8, "seed": 5, "family": family,
            "solver": {"tol": 1e-8, **solver}}
    return load_config(None, GenerationConfig, [f"{k}={json.dumps(v)}" for k, v in _flat(data)])


def _flat(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


FAMILIES = {
    "gaussian": {"name": "gaussian"},
    "shapes": {"name": "shapes"},
    "shepp_logan": {"name": "shepp_logan"},
    "absorbing discs": {"name": "discs", "absorption": [1.0]},
    "strong-contrast discs": {"name": "discs", "discs": {"contrast": [1.5, 2.0], "radius": [0.1, 0.2]}},
}


@pytest.mark.parametrize("family", FAMILIES.values(), ids=FAMILIES.keys())
def test_torch_far_fields_equal_numpy_in_float64(family):
    cfg = config(family)
    maker = SampleMaker(cfg)
    etas = np.stack([maker.scatterer(i).contrast_raster(cfg.n, cfg.box, cfg.family.supersample) for i in range(4)])
    reference = np.stack([maker.solver.far_field(eta) for eta in etas])
    torch_solver = TorchScatteringSolver(cfg.n, cfg.k, angles(cfg.Na), angles(cfg.Na), tol=cfg.solver.tol)
    one_by_one = np.stack([torch_solver.far_field(eta) for eta in etas])
    batched, iterations, residuals = torch_solver.solve(etas)
    print(f"{family['name']}: torch vs numpy, one sample per solve {rel_max(one_by_one, reference):.1e}, "
          f"4 per solve {rel_max(batched, reference):.1e}; GMRES at most {iterations.max()} iterations")
    assert rel_max(one_by_one, reference) <= 1e-10
    assert rel_max(batched, reference) <= 1e-10
    assert iterations.shape == (4,) and residuals.shape == (4, cfg.Na)
    assert residuals.max() <= 1.1 * cfg.solver.tol


def absorbing_disc(n, eta0=0.2, alpha=1.0, a=0.3, centre=(0.05, -0.03)):
    disc = Scatterer("discs", np.array([[KIND_ELLIPSE, eta0, *centre, a, a, 0.0]]), 0.45, clip=False,
                     smooth=False, absorption=alpha)
    return disc.contrast_raster(n, 1.0, 8)


def test_absorbing_disc_against_mie_through_the_torch_path():
    rec = angles(32)
    inc = rec[::4]
    ref = mie_far_field(K, 0.3, 0.2 * (1 + 1j), np.array([0.05, -0.03]), rec, inc)
    errors = {}
    for n in (16, 32):
        eta = absorbing_disc(n)
        numpy_error = np.linalg.norm(ScatteringSolver(n, K, inc, rec, tol=1e-10).far_field(eta) - ref)
        for precision in ("complex128", "complex64"):
            solver = TorchScatteringSolver(n, K, inc, rec, tol=1e-10 if precision == "complex128" else 1e-5,
                                           precision=precision)
            errors[n, precision] = np.linalg.norm(solver.far_field(eta) - ref) / np.linalg.norm(ref)
        assert errors[n, "complex128"] == pytest.approx(numpy_error / np.linalg.norm(ref), rel=1e-8)
    print("absorbing disc vs Mie, torch: " + ", ".join(f"n = {n} {p} {e:.3e}" for (n, p), e in errors.items()))
    assert errors[32, "complex128"] < errors[16, "complex128"] < 0.2
    # complex64 adds far less than the discretisation error it is allowed beside
    for n in (16, 32):
        assert abs(errors[n, "complex64"] - errors[n, "complex128"]) < 1e-3 * errors[n, "complex128"]


def test_complex64_far_fields_against_complex128():
    cfg = config({"name": "discs", "discs": {"contrast": [0.5, 0.8]}})
    maker = SampleMaker(cfg)
    etas = np.stack([maker.scatterer(i).contrast_raster(cfg.n, cfg.box, cfg.family.supersample) for i in range(3)])
    double = TorchScatteringSolver(cfg.n, cfg.k, angles(16), angles(16), tol=1e-10).solve(etas)[0]
    single, _, residuals = TorchScatteringSolver(cfg.n, cfg.k, angles(16), angles(16), tol=1e-5,
                                                 precision="complex64").solve(etas)
    error = rel_max(single, double)
    print(f"complex64 vs complex128 far fields: {error:.1e}, residuals ≤ {residuals.max():.1e}")
    assert error < 1e-4 and residuals.max() <= 1.1e-5


def test_a_gmres_that_does_not_converge_is_refused():
    solver = TorchScatteringSolver(32, K, angles(4), angles(4), tol=1e-12, max_iterations=3)
    with pytest.raises(ConvergenceError, match="did not converge for .* right-hand sides in 3 iterations"):
        solver.far_field(absorbing_disc(32))
    cfg = config({"name": "gaussian"}, backend="torch", batch=2, max_iterations=2)
    with pytest.raises(ConvergenceError, match="^samples 4–5: GMRES did not converge"):
        SampleMaker(cfg).many(4, 2)


def test_batched_generation_is_independent_of_the_rank_count(tmp_path, monkeypatch):
    if shutil.which("mpiexec", path=str(VENV_BIN)) is None:
        pytest.skip("mpiexec not installed in the environment")
    # runs of 2 samples from each 3-sample shard: 2 + 1 per shard, written by rank s mod P
    data = {**TINY, "samples_per_shard": 3, "solver": {"backend": "torch", "batch": 2}}
    cfg_path = write_config(tmp_path / "tiny.yaml", data)
    as_plain_process(monkeypatch)
    generate(load_config(cfg_path, GenerationConfig), tmp_path / "p1", progress=False)
    two = mpiexec_generate(cfg_path, tmp_path / "p2", "--device", "cpu", "--accuracy-samples", "0")
    assert two.returncode == 0, two.stderr
    m1 = json.loads((tmp_path / "p1" / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "p2" / "manifest.json").read_text())
    assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]
    for shard in m1["shards"]:
        assert (tmp_path / "p1" / shard["file"]).read_bytes() == (tmp_path / "p2" / shard["file"]).read_bytes()
    # and the far fields are the numpy backend's, to float32 storage
    generate(load_config(write_config(tmp_path / "np.yaml", TINY), GenerationConfig), tmp_path / "np",
             progress=False)
    assert rel_max(read_dataset(tmp_path / "p1")["farfield"], read_dataset(tmp_path / "np")["farfield"]) < 1e-6


def test_new_solver_keys_keep_existing_hashes():
    base = load_config(None, GenerationConfig)
    same = load_config(None, GenerationConfig, ["solver.backend=numpy", "solver.precision=complex128",
                                                "solver.batch=1"])
    assert same.sha256() == base.sha256()
    assert load_config(None, GenerationConfig, ["solver.backend=torch"]).sha256() != base.sha256()


def _refused(tmp_path, capsys, args, *names):
    out = tmp_path / "out"
    cfg_path = write_config(tmp_path / "tiny.yaml", TINY)
    assert cli_main(["generate", "--config", str(cfg_path), "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and all(name in err for name in names), err
    assert not out.exists()


@pytest.mark.parametrize("args, names", [
    (["--set", "solver.backend=jax"], ["solver.backend", "jax"]),
    (["--set", "solver.batch=4"], ["solver.backend"]),
    (["--set", "solver.backend=torch", "--set", "solver.precision=complex64", "--set", "solver.tol=1e-5"],
     ["solver.precision", "gaussian"]),
    (["--set", "solver.backend=torch", "--set", "solver.precision=complex64", "--set", "family.name=discs"],
     ["solver.precision", "solver.tol"]),
    (["--device", "cuda"], ["--device"]),
], ids=["unknown backend", "batch with numpy", "complex64 smooth family", "complex64 tol", "device cuda"])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, names):
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("a GPU is visible: --device cuda is valid here")
    _refused(tmp_path, capsys, args, *names)


def test_device_cuda_with_the_numpy_backend_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # past the no-GPU check, to the backend's
    _refused(tmp_path, capsys, ["--device", "cuda"], "--device", "solver.backend: torch")


def test_each_rank_solves_on_its_own_gpu(monkeypatch):
    from bcrdist.data.generate import solver_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for var, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(var, value)
    assert solver_device("cuda") == "cuda:1" and solver_device("cpu") == "cpu"
