"""`bcrdist predict` for every registered network and layout (Fan's polar `measure`, the complex far field to
Cartesian and polar targets, a far-field BCR-Net on Re F) and every input kind (a data-set folder, a split of it,
an HDF5 file of per-sample datasets or of the PyTorch port's columns, a `.npy` array): the predictions equal
`bcrdist evaluate`'s on the same samples, the output carries the target's grid, anything the model does not
read is refused in one line naming both sides, and data of other physics than the training data's are refused
by predict and evaluate alike unless allowed on purpose."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from bcrdist.cli.main import main
from bcrdist.models import BCRNet, network_class, network_names
from bcrdist.models.scattering import ScatteringModel
from prediction_helpers import (CASES, GRIDS, N, model_of, other_grid, port_file, save_checkpoint, split_samples,
                                write_dataset)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FOUR_PI = other_grid("cartesian", k=4 * math.pi, image_extent=1.0)      # the k = 4π, box 1 training data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    sets = {layout: write_dataset(root / layout, layout) for layout in GRIDS}
    sets["four_pi"] = write_dataset(root / "four_pi", "cartesian", grid=FOUR_PI, seed=1)
    return sets


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def read(path) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    with h5py.File(path, "r") as fh:
        return fh["pred"][()], fh["index"][()], dict(fh.attrs), {k: fh[k][()] for k in fh if k not in ("pred",
                                                                                                          "index")}


def one_line_error(rc: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, (rc, err)
    return lines[0]


def test_every_registered_network_is_a_case():
    builtin = {name for name in network_names() if network_class(name).__module__.startswith("bcrdist.")}
    assert builtin and builtin <= {model_of(case).model_type for case in CASES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_predict_gives_evaluates_predictions_for_every_input_kind(tmp_path, capsys, data, case):
    layout = CASES[case][0]
    model = model_of(case)
    ckpt = save_checkpoint(tmp_path / "best.pt", model, data[layout])
    rc, out, _ = run(capsys, "evaluate", "--checkpoint", ckpt, "--data", data[layout], "--out", tmp_path / "eval",
                     "--plots", "0")
    assert rc == 0, out
    with h5py.File(tmp_path / "eval" / "predictions.h5", "r") as fh:
        expected, index = fh["pred_eta"][()], fh["index"][()]
    assert index.tolist() == list(range(N // 2, N))

    samples = split_samples(data[layout])
    inputs = {"split": (data[layout], "--split", "test"), "all": (data[layout],)}
    if layout == "measure":
        with h5py.File(tmp_path / "in.h5", "w") as fh:
            fh["measure"], fh["measure_imag"] = samples["measure"], samples["measure_imag"]
        np.save(tmp_path / "in.npy", samples["measure"] + 1j * samples["measure_imag"])   # measure + i·measure_imag
    elif layout == "cartesian":
        port_file(tmp_path / "in.hdf5", samples["farfield"], samples["image"])
        np.save(tmp_path / "in.npy", samples["farfield"])
    else:
        with h5py.File(tmp_path / "in.h5", "w") as fh:
            fh["farfield"] = samples["farfield"]                                        # per sample, complex
        np.save(tmp_path / "in.npy", samples["farfield"])
    inputs["hdf5"] = (next(tmp_path.glob("in.h*5")),)
    inputs["npy"] = (tmp_path / "in.npy",)
    for kind, args in inputs.items():
        rc, out, err = run(capsys, "predict", "--checkpoint", ckpt, "--input", *args, "--out", tmp_path / f"{kind}.h5")
        assert rc == 0, err
        pred, got_index, attrs, coords = read(tmp_path / f"{kind}.h5")
        if kind == "all":
            assert got_index.tolist() == list(range(N))
            pred = pred[N // 2:]
        else:
            assert got_index.tolist() == (index.tolist() if kind == "split" else list(range(N // 2)))
        # the same float32 network on other batches: oneDNN may pick another kernel for another batch size (it
        # does on AVX-512/AMX machines), so entries agree to float32 rounding of the output's scale
        np.testing.assert_allclose(pred, expected, rtol=1e-5, atol=2e-6 * np.abs(expected).max(), err_msg=kind)
        grid = GRIDS[layout]
        assert attrs["layout"] == grid.target and attrs["model_type"] == model.model_type
        assert json.loads(attrs["grid"])["k"] == grid.k and attrs["input_kind"] == \
            {"split": "dataset", "all": "dataset"}.get(kind, kind)
        if grid.cartesian:
            np.testing.assert_array_equal(coords["x"], grid.image_axis())
            assert attrs["axes"].startswith("pred[n, i, j] = eta(x[i], y[j])")
        else:
            np.testing.assert_allclose(coords["theta"], 2 * np.pi * np.arange(grid.polar_nt) / grid.polar_nt)
            np.testing.assert_allclose(coords["rho"], (np.arange(grid.polar_nr) + 0.5) * grid.polar_radius /
                                       grid.polar_nr)
        if case == "bcrnet-farfield-real":
            # the complex far field given to a model of its real part: read as trained, and said so
            assert "imaginary part of the input is not used" in attrs["notes"]
            assert "note: the model reads the real part of 'farfield' only" in out
        else:
            assert attrs["notes"] == "" and "note:" not in out


def test_anything_the_model_does_not_read_is_one_line_naming_both(tmp_path, capsys, data):
    far = save_checkpoint(tmp_path / "far.pt", model_of("cnn"), data["cartesian"])
    polar = save_checkpoint(tmp_path / "polar.pt", model_of("bcnn-polar"), data["polar_far"])
    fan = save_checkpoint(tmp_path / "fan.pt", model_of("bcrnet-measure"), data["measure"])
    real_only = save_checkpoint(tmp_path / "real.pt", ScatteringModel(BCRNet(n_input=(16, 8), n_output=(16, 6),
                                                                             alpha=2, n_cnn=1, n_cnn3=1)),
                                data["measure"])
    fan_samples, far_samples = split_samples(data["measure"]), split_samples(data["cartesian"])
    with h5py.File(tmp_path / "fan.h5", "w") as fh:
        fh["measure"], fh["coe"] = fan_samples["measure"], fan_samples["coe"]
    port = port_file(tmp_path / "port.hdf5", far_samples["farfield"], far_samples["image"])
    port_real = port_file(tmp_path / "port_real.hdf5", far_samples["farfield"], far_samples["image"], imag=False)
    np.save(tmp_path / "complex.npy", fan_samples["measure"] + 0.5j)
    np.save(tmp_path / "real.npy", fan_samples["measure"])
    np.save(tmp_path / "vector.npy", np.zeros(5))
    (tmp_path / "folder").mkdir()
    wants = {
        # the far-field model, given Fan's file (the friction: "no datasets ['measure']" sent users elsewhere)
        (far, tmp_path / "fan.h5"): "fan.h5: no 'farfield' and no farfield.real/farfield.imag; the model reads the "
                                    "complex far field 'farfield' (N, 12, 12), its real and imaginary parts (the "
                                    "input holds coe (10, 16, 6) float32, measure (10, 16, 8) float32)",
        (far, port_real): "port_real.hdf5: no 'farfield' and no farfield.imag; the model reads the complex far field",
        (far, data["measure"]): "the input holds coe (20, 16, 6) float32, measure (20, 16, 8) float32, measure_imag",
        (polar, port): "port.hdf5: 'farfield' has 12×12 samples (N = 10); the model (bcnn) reads the complex far "
                       "field 'farfield' (N, 8, 8), its real and imaginary parts",
        (fan, port): "port.hdf5: no dataset 'measure'; the model reads the real 'measure' and 'measure_imag', each "
                     "(N, 16, 8) (the input holds farfield.imag (144, 10) float32, farfield.real (144, 10) float32",
        (fan, tmp_path / "fan.h5"): "fan.h5: no 'measure_imag' (or give 'measure' complex, measure + i·measure_imag)",
        (fan, tmp_path / "real.npy"): "real.npy: no 'measure_imag' (or give 'measure' complex",
        (real_only, tmp_path / "complex.npy"): "complex.npy: 'measure' is complex (pass its real part); the model "
                                               "reads the real 'measure' (N, 16, 8) (the input holds a complex64 "
                                               "array (10, 16, 8))",
        (far, tmp_path / "vector.npy"): "vector.npy: a float64 array of shape (5,); the model reads the complex far "
                                        "field 'farfield' (N, 12, 12), its real and imaginary parts (or one sample "
                                        "(12, 12))",
        (far, tmp_path / "folder"): "folder: a folder without manifest.json (not a bcrdist data set)",
    }
    for (ckpt, source), want in wants.items():
        rc, _, err = run(capsys, "predict", "--checkpoint", ckpt, "--input", source, "--out", tmp_path / "out.h5")
        assert want in one_line_error(rc, err), (source, err)
        assert not (tmp_path / "out.h5").exists()
    rc, _, err = run(capsys, "predict", "--checkpoint", far, "--input", port, "--split", "test", "--out",
                     tmp_path / "out.h5")
    assert "--split test: applies to a data-set folder" in one_line_error(rc, err)


def test_other_physics_are_refused_in_one_line_and_accepted_on_purpose(tmp_path, capsys, data):
    """The issue's case: a k = 4π, box 1 model on k = 16, box 2 data; the training grid read from the
    checkpoint's provenance, from a Born layer, and from the training data set itself."""
    ckpt = save_checkpoint(tmp_path / "cnn.pt", model_of("cnn"), data["four_pi"])
    wanted = "k 16 (training data: 12.56637061), image_extent 2 (training data: 1)"
    for command in (("evaluate", "--data", data["cartesian"], "--out", tmp_path / "eval", "--plots", "0"),
                    ("predict", "--input", data["cartesian"], "--out", tmp_path / "pred.h5")):
        rc, _, err = run(capsys, command[0], "--checkpoint", ckpt, *command[1:])
        line = one_line_error(rc, err)
        assert f"{data['cartesian']}: the data's physics differ from the model's training data (the training " \
               f"data's grid in the checkpoint): {wanted}; " in line and "--allow-physics-mismatch" in line, line
        rc, out, err = run(capsys, command[0], "--checkpoint", ckpt, *command[1:], "--allow-physics-mismatch")
        assert rc == 0, err
        assert wanted in out and "--allow-physics-mismatch" in out
    physics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["physics"]
    assert physics["compared"] and physics["allowed"]
    assert physics["differences"] == {"k": {"training": FOUR_PI.k, "data": 16.0},
                                      "image_extent": {"training": 1.0, "data": 2.0}}
    with h5py.File(tmp_path / "eval" / "predictions.h5", "r") as fh:
        assert json.loads(fh.attrs["physics"])["allowed"]
    _, _, attrs, _ = read(tmp_path / "pred.h5")
    assert json.loads(attrs["physics"])["allowed"] and wanted in attrs["notes"]
    # a file records no physics: nothing to compare
    samples = split_samples(data["cartesian"])
    rc, _, err = run(capsys, "predict", "--checkpoint", ckpt, "--input",
                     port_file(tmp_path / "port.hdf5", samples["farfield"], samples["image"]), "--out",
                     tmp_path / "p.h5")
    assert rc == 0, err

    # a Born layer's grid (no grid in the provenance): the BCNN of k = 16 on the k = 4π data
    born = save_checkpoint(tmp_path / "bcnn.pt", model_of("bcnn-cartesian"), data["cartesian"], grid=None)
    rc, _, err = run(capsys, "evaluate", "--checkpoint", born, "--data", data["four_pi"], "--out", tmp_path / "e2")
    assert "(the grid of the model's Born layer): k 12.56637061 (training data: 16), image_extent 1 (training " \
           "data: 2)" in one_line_error(rc, err)

    # the training data set the config names, while it is there with the recorded id
    trained_on = write_dataset(tmp_path / "trained_on", "measure", grid=other_grid("measure", k=10.0, polar_radius=1.0))
    fan = save_checkpoint(tmp_path / "fan.pt", model_of("bcrnet-measure"), trained_on, grid=None)
    rc, _, err = run(capsys, "predict", "--checkpoint", fan, "--input", data["measure"], "--split", "test", "--out",
                     tmp_path / "p2.h5")
    assert f"(the training data set {trained_on}): k 8 (training data: 10), polar_radius 0.5 (training data: 1)" \
        in one_line_error(rc, err)
    (trained_on / "manifest.json").unlink()                  # moved away: nothing recorded to compare with
    rc, _, err = run(capsys, "evaluate", "--checkpoint", fan, "--data", data["measure"], "--out", tmp_path / "e3",
                     "--plots", "0")
    assert rc == 0, err
    assert json.loads((tmp_path / "e3" / "metrics.json").read_text())["physics"]["compared"] is False
