"""The `bcrdist baseline` command (`bcrdist.cli.baseline`, `bcrdist.train.baseline`): metrics and λ of the Born
inversion on a split of generated data with every sample's errors by global index, a one-line error for data
without far fields; on the far-field/image layout end to end: generated data, the same data converted from the
port's column file in the conjugate sign convention (detected), and options that contradict the data."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest

from bcrdist.cli import main
from bcrdist.data.convert import shard_file
from bcrdist.data.format import read_manifest, update_manifest
from bcrdist.data.generate import generate
from bcrdist.data.splits import load_split, write_splits
from bcrdist.physics.layout import GridInfo, columns_from_samples
from generation_helpers import NA, NR, RADIUS, K, demo_gaussian_config, read_dataset
from train_helpers import make_dataset


def test_cli_reports_metrics_and_lambda(tmp_path, capsys):
    data = tmp_path / "data"
    generate(demo_gaussian_config((0.05, 0.1), 40, samples_per_shard=20), data, progress=False)
    write_splits(data, 0.75, val=10)
    out = tmp_path / "baseline.json"
    assert main(["baseline", "--data", str(data), "--noise", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["metrics"]) == {"weighted", "rel_l2", "rel_l1", "psnr"}
    assert set(doc["metrics"]["weighted"]) == {"mean", "std", "max", "count"}
    assert doc["metrics"]["weighted"]["count"] == 10 and doc["val_count"] == 10
    assert 0 < doc["metrics"]["weighted"]["mean"] < 0.5
    assert np.isfinite(doc["lambda"]) and doc["lambda"] > 0
    assert doc["operator"] == {"k": pytest.approx(K), "Na": NA, "Nr": NR, "polar_radius": RADIUS}
    assert "Born baseline" in capsys.readouterr().out
    # issue 21: without --out the summary line alone; the JSON document on stdout with --json
    assert main(["baseline", "--data", str(data), "--noise", "1"]) == 0
    io = capsys.readouterr()
    assert len(io.out.strip().splitlines()) == 1 and "Born baseline" in io.out and not io.err, io
    assert main(["baseline", "--data", str(data), "--noise", "1", "--json"]) == 0
    io = capsys.readouterr()
    printed = json.loads(io.out)
    assert printed["metrics"] == doc["metrics"] and printed["lambda"] == doc["lambda"] and "Born baseline" in io.err
    # every sample's errors, by the split's global indices; the same noisy command gives the same numbers
    assert_samples_are_the_metrics(doc, data)
    assert printed["samples"] == doc["samples"]


def assert_samples_are_the_metrics(doc: dict, data) -> None:
    """The result's "samples" hold the test split's indices in order and each metric's per-sample values, whose
    mean (and max, or min for PSNR) are the reported ones."""
    samples = doc["samples"]
    assert samples["index"] == load_split(read_manifest(data), "test").tolist()
    assert list(samples) == ["index", *doc["metrics"]]
    for name, summary in doc["metrics"].items():
        assert len(samples[name]) == summary["count"]
        assert np.mean(samples[name]) == pytest.approx(summary["mean"], rel=1e-12)
        worst = min(samples[name]) if name == "psnr" else max(samples[name])
        assert worst == pytest.approx(summary["min" if name == "psnr" else "max"], rel=1e-12)


def test_cli_one_line_error_without_farfield(tmp_path, capsys):
    data = make_dataset(tmp_path / "nofar", n=40, val=8)
    assert main(["baseline", "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no 'farfield' dataset" in err and err.startswith("bcrdist baseline: error:")


@pytest.fixture(scope="module")
def farfield_data(tmp_path_factory):
    """A tiny generated far-field/image data set on the port's endpoint grid (weak Gaussian bumps)."""
    data = tmp_path_factory.mktemp("farfield") / "data"
    cfg = dataclasses.replace(demo_gaussian_config((1e-3, 2e-3), 40, samples_per_shard=20), Na=17, layout="farfield",
                              angles="endpoint")
    cfg.validate()
    generate(cfg, data, progress=False)
    write_splits(data, 0.75, val=10)
    return data


def _run(capsys, *args):
    rc = main(["baseline", *map(str, args)])
    return rc, capsys.readouterr()


def test_far_field_image_data_end_to_end(farfield_data, tmp_path, capsys):
    out = tmp_path / "generated.json"
    rc, io = _run(capsys, "--data", farfield_data, "--out", out)
    assert rc == 0 and "relative L1" in io.out and "pixel max 2" in io.out and "radius-weighted" not in io.out
    doc = json.loads(out.read_text())
    assert set(doc["metrics"]) == {"rel_l2", "rel_l1", "psnr"}            # no radius weight on a Cartesian target
    assert doc["metrics"]["psnr"]["pixel_max"] == 2.0 and doc["metrics"]["rel_l2"]["count"] == 10
    assert doc["metrics"]["rel_l2"]["mean"] < 0.03 and doc["metrics"]["rel_l1"]["mean"] < 0.06
    assert doc["grid"]["angles"] == "endpoint" and doc["grid"]["target"] == "cartesian"
    assert doc["grid"]["farfield_sign"] == -1 and doc["sign_source"] == "recorded"
    assert doc["born_fit"]["-1"]["score"] > 0.999 > doc["born_fit"]["1"]["score"]
    assert "val_rel_l2" in doc and "val_weighted" not in doc
    assert_samples_are_the_metrics(doc, farfield_data)

    # the same data as the port stores them: columns of (M, N) datasets, far field in the conjugate convention
    arrays = read_dataset(farfield_data)
    src = tmp_path / "port.hdf5"
    with h5py.File(src, "w") as fh:
        fh["farfield.real"] = columns_from_samples(arrays["farfield"].real)
        fh["farfield.imag"] = columns_from_samples(-arrays["farfield"].imag)
        fh["image"] = columns_from_samples(arrays["image"])
    converted = tmp_path / "converted"
    shard_file(src, converted, 20)
    write_splits(converted, 0.75, val=10)
    grid_args = ["--k", K, "--box", 1, "--image-points", "centres"]
    out_conv = tmp_path / "converted.json"
    rc, _ = _run(capsys, "--data", converted, *grid_args, "--out", out_conv)
    assert rc == 0
    conv = json.loads(out_conv.read_text())
    assert conv["grid"]["farfield_sign"] == 1 and conv["sign_source"].startswith("detected on")
    for name in ("rel_l2", "rel_l1"):                     # conjugated back: the generated data's numbers
        assert conv["metrics"][name]["mean"] == pytest.approx(doc["metrics"][name]["mean"], rel=1e-6)
    # told the wrong convention, the inversion fails; told nothing about the box, it stops with one line
    rc, _ = _run(capsys, "--data", converted, *grid_args, "--sign=-1", "--out", tmp_path / "wrong.json")
    assert rc == 0 and json.loads((tmp_path / "wrong.json").read_text())["metrics"]["rel_l2"]["mean"] > 0.5
    rc, io = _run(capsys, "--data", converted, "--k", K)
    assert rc == 2 and io.err.count("\n") == 1 and "pass --box" in io.err

    # a manifest `grid` record (what the data side writes) replaces the options; an option must agree with it
    recorded = GridInfo(k=K, angles="endpoint", n_obs=17, n_inc=17, target="cartesian", farfield_sign=1,
                        image_size=32, image_extent=1.0, image_points="centres")
    update_manifest(converted, grid=recorded.to_record())
    rc, _ = _run(capsys, "--data", converted, "--out", tmp_path / "recorded.json")
    rec = json.loads((tmp_path / "recorded.json").read_text())
    assert rc == 0 and rec["sign_source"] == "recorded" and rec["grid"] == recorded.to_record()
    assert rec["metrics"]["rel_l2"]["mean"] == pytest.approx(doc["metrics"]["rel_l2"]["mean"], rel=1e-6)
    rc, io = _run(capsys, "--data", converted, "--image-points", "nodes")
    assert rc == 2 and "--image-points: 'nodes' contradicts the manifest's grid record" in io.err
    update_manifest(converted, grid={**recorded.to_record(), "image_size": 30})
    rc, io = _run(capsys, "--data", converted)
    assert rc == 2 and "the grid record does not match the datasets' shapes" in io.err


@pytest.mark.parametrize("args, message", [
    (["--k", "3"], "--k: 3.0 contradicts the manifest's grid record"),
    (["--sign=+1"], "--sign: 1 contradicts the manifest's grid record"),
    (["--angles", "periodic"], "--angles: 'periodic' contradicts the manifest's grid record"),
    (["--entries", "measure"], "--entries: 'measure' applies to Fan's polar layout only"),
])
def test_far_field_options_that_do_not_fit_are_one_line_errors(farfield_data, tmp_path, capsys, args, message):
    out = tmp_path / "never.json"
    rc, io = _run(capsys, "--data", farfield_data, *args, "--out", out)
    err = io.err.strip()
    assert rc == 2 and "\n" not in err and err.startswith("bcrdist baseline: error:") and message in err, err
    assert not out.exists()


def test_calibrate_refused_on_polar_targets(tmp_path, capsys):
    data = tmp_path / "polar"
    generate(demo_gaussian_config((0.05, 0.1), 12, samples_per_shard=12), data, progress=False)
    write_splits(data, 0.5, val=3)
    rc, io = _run(capsys, "--data", data, "--calibrate")
    assert rc == 2 and "--calibrate: applies to the Cartesian (far-field/image) layout only" in io.err
