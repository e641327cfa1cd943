"""One sample (`bcrdist.physics.sampling.SampleMaker`): rotation equivariance of `coe` and the preprocessed
`measure`, a non-convergence error naming the sample, the far-field/image layout on both angle grids, its
config options and the config hash of existing data sets."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from bcrdist.config import load_config, to_dict
from bcrdist.errors import ConfigError
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.physics.layout import image_coordinates
from bcrdist.physics.sampling import SampleMaker
from bcrdist.physics.solver import ConvergenceError, ScatteringSolver
from bcrdist.transforms import antipodal

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def test_non_convergence_names_the_sample():
    maker = SampleMaker(load_config(None, GenerationConfig, ["n=32", "solver.max_iterations=2"]))
    with pytest.raises(ConvergenceError, match="^sample 5: GMRES did not converge"):
        maker(5)


FARFIELD = ["n=32", "k_over_pi=4", "layout=farfield", "family.gaussian.width=[0.08, 0.1]",
            "family.gaussian.tail_sigmas=3.5", "family.gaussian.count=[1, 3]"]


@pytest.mark.parametrize("angles, na", [("periodic", 16), ("endpoint", 17)])
def test_farfield_layout_arrays(angles, na):
    cfg = load_config(None, GenerationConfig, FARFIELD + [f"angles={angles}", f"Na={na}"])
    maker = SampleMaker(cfg)
    a = maker(3)
    assert set(a) == {"farfield", "image", "eta", "family", "num_primitives", "primitives", "iterations", "residual"}
    assert 0 < a["residual"] <= 1.1 * cfg.solver.tol and a["residual"].dtype == np.float32
    assert a["farfield"].shape == (na, na) and a["farfield"].dtype == np.complex64
    assert a["image"].dtype == np.float32 and np.array_equal(a["image"], a["eta"])  # image_size 0: the solver's raster
    # F[obs, src] on the configured grid: the solver's far field (n_inc, n_rec), transposed
    theta = maker.grid.obs_angles()
    direct = ScatteringSolver(32, cfg.k, theta, theta, tol=cfg.solver.tol).far_field(a["eta"].astype(np.float64)).T
    err = np.abs(a["farfield"] - direct).max() / np.abs(direct).max()
    print(f"{angles}: far field vs a direct solve on all {na} directions {err:.1e}")
    assert err < 1e-6
    if angles == "endpoint":   # −π and π are one direction: the stored rows and columns are equal
        assert np.array_equal(a["farfield"][0], a["farfield"][-1])
        assert np.array_equal(a["farfield"][:, 0], a["farfield"][:, -1])


def test_farfield_image_on_its_own_grid():
    cfg = load_config(None, GenerationConfig, FARFIELD + ["Na=8", "image_size=20"])
    maker = SampleMaker(cfg)
    s = maker.scatterer(2)
    a = maker.arrays(s)
    assert a["image"].shape == (20, 20) and a["eta"].shape == (32, 32)
    x = image_coordinates(20, cfg.box)
    np.testing.assert_allclose(a["image"], s(x[:, None], x[None, :]), rtol=1e-6)  # η at the 20² cell centres


@pytest.mark.parametrize("override, message", [
    (["angles=endpoint"], "angles: 'endpoint' needs layout: farfield"),
    (["image_size=32"], "image_size: 32 applies to layout: farfield only"),
    (["layout=farfield", "image_size=1"], "image_size: must be 0 (the solver's n) or ≥ 2"),
    (["layout=farfield", "image_size=-1"], "image_size: must be an integer ≥ 0"),
    (["layout=grid"], "layout: expected one of"),
])
def test_layout_options_refused_where_they_do_not_apply(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, GenerationConfig, override)
    load_config(None, GenerationConfig, ["layout=farfield", "Na=30"])   # Na need not be a multiple of 4 here


def _hash_without(cfg, keys, family_keys=()) -> str:
    """The config hash as it was computed before `keys` (and `family_keys` of the family section) existed."""
    data = {key: value for key, value in to_dict(cfg).items() if key not in keys}
    data["family"] = {key: value for key, value in data["family"].items() if key not in family_keys}
    # the solver's backend, precision and batch came later still, all three left at their defaults here
    data["solver"] = {key: value for key, value in data["solver"].items()
                      if key not in ("backend", "precision", "batch")}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def test_hash_of_existing_configs_is_unchanged_and_new_keys_count():
    new_keys = {"layout", "angles", "image_size", "image_points"}
    new_family_keys = {"mixture", "absorption", "discs", "squares", "u_shapes", "rings"}
    for overrides in ([], ["n=16", "Na=8", "seed=3"], ["family.name=shapes"]):
        cfg = load_config(None, GenerationConfig, overrides)
        assert cfg.sha256() == _hash_without(cfg, new_keys, new_family_keys)
    base = load_config(None, GenerationConfig, ["layout=farfield"])
    hashes = {base.sha256(), load_config(None, GenerationConfig).sha256()}
    for extra in (["angles=endpoint"], ["image_size=48"], ["Na=100"]):
        hashes.add(load_config(None, GenerationConfig, ["layout=farfield", *extra]).sha256())
    assert len(hashes) == 5


# sha256 of every data config as computed before the study families, mixtures and absorption existed (git
# d517a2b): data sets made with them must keep resuming
EXISTING_CONFIG_HASHES = {
    "default.yaml": "a48d3c23633a0f2313b6d2d2d57f4417072c951b192bd1162a34c5cb220f6a53",
    "default_shapes.yaml": "b00b6a5326fcf7ae96fad99226339bc2a40d0ec23ed2276e792559550876c2fc",
    "default_shepp.yaml": "934b3adc9a514f4c1efb3fa8960447a976889a3f792afd848f0566f3a4faa266",
    "demo.yaml": "5a9f8b4e3a29c68abcf01b439fa8dbdd95524d95ddbbad4883e7115f0d0e3cfa",
    "demo_farfield.yaml": "66da4ef0cb1635fb3c56354fc29556e6feece9aee71a16fc2f6fb7fd807b126a",
    "demo_shapes.yaml": "c17b3e6f7871110b610cff746d6ec7f68216f2fe1742f644eb14a5382561de9d",
    "demo_shepp.yaml": "8f9909fcf3ffe1de645813c6bcf9335b0bb922c632d115dee82ffd0b0a24e647",
    "fan_ying.yaml": "fcd1f60087d38a6234d8f3a35b3ca6d253bde937b4a869834f4aa62265001c29",
}


def test_hash_of_existing_data_configs_is_unchanged_by_the_family_keys():
    data = Path(__file__).resolve().parents[1] / "configs" / "data"
    for name, sha in EXISTING_CONFIG_HASHES.items():
        assert load_config(data / name, GenerationConfig).sha256() == sha, name
    assert load_config(None, GenerationConfig).sha256() == \
        "bf02c5e03348edecc1eabacd89a7141622911079e7a13c82513a6edf0266ea0d"
    # the new keys count once they leave their defaults
    hashes = {load_config(None, GenerationConfig, extra).sha256() for extra in (
        [], ["family.absorption=[0.0, 1.0]"], ["family.discs.gap=0.02"], ["family.rings.bands=[2, 4]"],
        ["family.name=mixture", "family.mixture={gaussian: 1, discs: 1}"])}
    assert len(hashes) == 5
