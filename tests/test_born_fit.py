"""One Born fit (`bcrdist.train.born_fit.fit_born`) and `bcrdist baseline --method lsqr`: the baseline through the
CLI equals scipy's lsqr on the study's matrix built independently (cell centres, and nodes where the study's
cell differs from the node spacing); the Born torch layer made from the fit's definition gives the baseline's
estimates on the same noisy far fields (CNNB's Born layer = `bcrdist baseline --method lsqr --damp 0.1`); the
Tikhonov fit's λ is the baseline's; the sign is detected when not recorded, the validation split is read only
when needed; one-line refusals naming the caller's keys."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from bcrdist.cli import main
from bcrdist.data.format import update_manifest
from bcrdist.data.generate import generate
from bcrdist.data.splits import write_splits
from bcrdist.data.stats import store_statistics
from bcrdist.errors import ConfigError
from bcrdist.models.born_layers import BornReconstruction
from bcrdist.physics.born import noisy_far_field
from bcrdist.physics.born_definition import make_inversion
from bcrdist.physics.layout import GridInfo
from bcrdist.train.born_fit import BornRequest, fit_born, load
from generation_helpers import K, demo_gaussian_config
from lsqr_reference import scipy_reference, study_matrix
from train_helpers import bcrdist as bcrdist_cli

NA, SIZE, NOISE = 16, 16, 1.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """40 bumps in the far-field/image layout: 16 endpoint directions, 16² cell centres on the unit box."""
    root = tmp_path_factory.mktemp("born_fit") / "data"
    cfg = dataclasses.replace(demo_gaussian_config((0.05, 0.1), 40, samples_per_shard=20), Na=NA, layout="farfield",
                              angles="endpoint", image_size=SIZE)
    cfg.validate()
    generate(cfg, root, progress=False)
    store_statistics(root)
    write_splits(root, 0.5, val=10)
    return root


def recorded_copy(data, tmp_path, **grid) -> str:
    """The data set with a manifest grid record (its own grid with `grid` changed)."""
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    fields = dict(k=K, angles="endpoint", n_obs=NA, n_inc=NA, target="cartesian", farfield_sign=-1,
                  image_size=SIZE, image_extent=1.0, image_points="centres")
    update_manifest(copy, grid=GridInfo(**{**fields, **grid}).to_record())
    return str(copy)


def noisy_test_split(path):
    F, image, index = load(path, "test", target="image")
    return noisy_far_field(F, NOISE, index, 0, "fan"), image


def mean_relative(pred, target, order):
    t = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
    diff = pred.reshape(len(pred), -1) - t
    return float(np.mean(np.linalg.norm(diff, order, axis=1) / np.linalg.norm(t, order, axis=1)))


@pytest.mark.parametrize("points", ["centres", "nodes"])
def test_cli_lsqr_equals_scipy(data, tmp_path, points):
    path = str(data) if points == "centres" else recorded_copy(data, tmp_path, image_points="nodes")
    out = tmp_path / "lsqr.json"
    result = bcrdist_cli("baseline", "--data", path, "--method", "lsqr", "--damp", "0.1", "--noise", str(NOISE),
                         "--out", str(out))
    assert "damped least squares, damp = 0.1" in result.stdout
    doc = json.loads(out.read_text())
    assert doc["method"] == "born-lsqr" and doc["damp"] == 0.1 and doc["norm"] == "euclidean"
    assert "lambda" not in doc and "val_data" not in doc and doc["sign_source"] == "recorded"
    F, image = noisy_test_split(path)
    A = study_matrix(K, 1.0, SIZE, points, "endpoint", NA, NA, -1)
    reference = scipy_reference(A, F, 0.1, (SIZE, SIZE))
    for name, order in (("rel_l2", 2), ("rel_l1", 1)):
        assert doc["metrics"][name]["mean"] == pytest.approx(mean_relative(reference, image, order), rel=1e-7)
    definition, record = fit_born(path, BornRequest("lsqr", damp=0.1), noise=NOISE)
    assert record == {"method": "lsqr", "norm": "euclidean", "entries": "farfield", "sign_source": "recorded",
                      "farfield_sign": -1, "damp": 0.1}
    mine = make_inversion(definition).predict(F[:4])
    np.testing.assert_allclose(mine, reference[:4], rtol=0, atol=1e-8 * np.abs(reference[:4]).max())


def test_born_layer_equals_the_lsqr_baseline(data, tmp_path):
    out = tmp_path / "lsqr.json"
    assert main(["baseline", "--data", str(data), "--method", "lsqr", "--damp", "0.1", "--noise", str(NOISE),
                 "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    definition, _ = fit_born(data, BornRequest("lsqr", damp=0.1), noise=NOISE)
    F, image = noisy_test_split(data)
    baseline = make_inversion(definition).predict(F)
    parts = np.concatenate([F.real, F.imag], axis=-1)                         # the network's raw input layout
    for precision, tol in (("float64", 1e-10), ("float32", 1e-4)):
        layer = BornReconstruction((NA, 2 * NA), (SIZE, SIZE), precision=precision)
        layer.set_definition(definition)
        with torch.no_grad():
            born = layer(torch.from_numpy(parts).to(layer.dtype)).double().numpy()
        assert np.abs(born - baseline).max() <= tol * np.abs(baseline).max(), precision
        assert mean_relative(born, image, 2) == pytest.approx(doc["metrics"]["rel_l2"]["mean"], rel=10 * tol)


def test_tikhonov_fit_is_the_baselines(data, tmp_path):
    out = tmp_path / "tikhonov.json"
    assert main(["baseline", "--data", str(data), "--noise", str(NOISE), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    definition, record = fit_born(data, BornRequest(), noise=NOISE)
    assert doc["method"] == "born-tikhonov" and record["method"] == "tikhonov"
    assert definition.parameter == record["lambda"] == doc["lambda"]
    assert record["val_error"] == doc["val_rel_l2"] and record["val_count"] == doc["val_count"] == 10
    assert record["lambda_source"] == "validation" and record["selection_metric"] == "rel_l2"
    assert record["born_fit"] == doc["born_fit"] and record["noise"] == NOISE
    F, _ = noisy_test_split(data)
    layer = BornReconstruction((NA, 2 * NA), (SIZE, SIZE))
    layer.set_definition(definition)
    want = make_inversion(definition).predict(F)
    with torch.no_grad():
        born = layer(torch.from_numpy(np.concatenate([F.real, F.imag], axis=-1)).float()).numpy()
    assert np.abs(born - want).max() <= 1e-4 * np.abs(want).max()
    given, record = fit_born(data, BornRequest(lam=doc["lambda"]), keys={"lam": "model.bcnn.born_lambda"})
    assert given == definition and record["lambda_source"] == "model.bcnn.born_lambda" and "val_data" not in record
    by_index, record = fit_born(data, BornRequest(), noise=NOISE, val_split=np.arange(20, 30))
    assert record["val_split"] == "10 samples by index" and record["val_count"] == 10


def test_sign_detected_and_calibrated(data, tmp_path):
    path = recorded_copy(data, tmp_path, farfield_sign=None)
    definition, record = fit_born(path, BornRequest("lsqr", damp=1.0))
    assert definition.grid.farfield_sign == -1 and record["sign_source"].startswith("detected on")
    assert record["born_fit"]["-1"]["score"] > record["born_fit"]["1"]["score"] and record["val_split"] == "val"
    _, record = fit_born(path, BornRequest("lsqr", damp=1.0), calibrate=True)
    assert len(record["calibration"]) == 2 and abs(complex(*record["calibration"]) - 1) < 0.2


@pytest.fixture(scope="module")
def polar_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("born_fit_polar") / "polar"
    generate(demo_gaussian_config((0.05, 0.1), 12, samples_per_shard=12), root, progress=False)
    write_splits(root, 0.5, val=3)
    return root


@pytest.mark.parametrize("args, message", [
    (["--method", "lsqr"], "--damp: --method lsqr needs the damping d"),
    (["--method", "lsqr", "--damp", "0"], "--damp: must be finite and > 0, got 0.0"),
    (["--method", "lsqr", "--damp", "nan"], "--damp: must be finite and > 0, got nan"),
    (["--method", "lsqr", "--damp", "1", "--norm", "area"], "--norm: applies to --method tikhonov only"),
    (["--method", "lsqr", "--damp", "1", "--lambda", "1"], "--lambda: applies to --method tikhonov only"),
    (["--method", "lsqr", "--damp", "1", "--grid", "9"], "--grid: applies to --method tikhonov only"),
    (["--method", "lsqr", "--damp", "1", "--entries", "measure"], "--entries: 'measure' applies to Fan's polar"),
    (["--damp", "1"], "--damp: applies to --method lsqr only"),
    (["--grid", "1"], "--grid: need at least 2 λ candidates"),
    (["--lambda", "-1"], "--lambda: must be finite and ≥ 0"),
])
def test_refusals_are_one_line_errors(data, tmp_path, capsys, args, message):
    out = tmp_path / "never.json"
    rc = main(["baseline", "--data", str(data), *args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith("bcrdist baseline: error:") and message in err, err
    assert not out.exists()


def test_lsqr_refused_on_polar_data_and_keys_named_by_the_caller(polar_data, data, capsys):
    rc = main(["baseline", "--data", str(polar_data), "--method", "lsqr", "--damp", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--method: lsqr reconstructs Cartesian images" in err and err.count("\n") == 1
    with pytest.raises(ConfigError, match=r"^model\.cnnb\.damp: model\.cnnb\.method lsqr needs the damping"):
        fit_born(data, BornRequest("lsqr"), keys={"damp": "model.cnnb.damp", "method": "model.cnnb.method"})
