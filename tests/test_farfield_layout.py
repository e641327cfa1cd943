"""Training on the far-field → image layout: converted port files and generated data on both angle grids, the
grid record, `model.pad_to` kept out of loss and metrics, the port's flags, and one-line refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import bcrdist
from bcrdist.cli import main
from bcrdist.cli.train import add_train_arguments, original_flag_overrides
from bcrdist.data.convert import shard_file
from bcrdist.data.format import read_manifest
from bcrdist.data.generate import generate
from bcrdist.data.splits import write_splits
from bcrdist.data.stats import store_statistics
from bcrdist.metrics import relative_l2
from bcrdist.models.bcrnet import BCRNet
from bcrdist.models.registry import NetworkIO
from bcrdist.models.scattering import ScatteringModel
from bcrdist.physics.layout import columns_from_samples
from bcrdist.train.config import TrainConfig
from generation_helpers import demo_gaussian_config
from train_helpers import write_config

FIXTURE_DATA = Path(__file__).parent / "fixtures" / "checkpoint-v1" / "data"
# model.bc_padding left at its default (auto): zero on the port's endpoint grid, period on a periodic one
FAR_MODEL = {"alpha": 3, "n_cnn": 1, "n_cnn3": 2}


def port_file(path: Path, n: int = 80, side: int = 16, seed: int = 0) -> Path:
    """A far-field/image `.hdf5` in the port's column layout; the far field a fixed linear image of `image`."""
    rng = np.random.default_rng(seed)
    image = np.abs(rng.standard_normal((n, side, side))).astype(np.float32)
    mix = rng.standard_normal((side, side)) / np.sqrt(side)
    far = np.einsum("bij,jk->bik", image, mix) + 1j * np.einsum("bij,jk->bik", image, mix.T)
    with h5py.File(path, "w") as fh:
        fh["farfield.real"] = columns_from_samples(far.real.astype(np.float32))
        fh["farfield.imag"] = columns_from_samples(far.imag.astype(np.float32))
        fh["image"] = columns_from_samples(image)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("port")
    data = root / "data"
    shard_file(port_file(root / "merged_data.hdf5"), data, 40, grid={"k": 8.0, "box": 2.0})
    write_splits(data, 0.75, val=10)
    return data


def train_and_evaluate(data: Path, tmp_path: Path, data_keys: dict, model: dict | None = None) -> tuple[dict, dict]:
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", data, run, data={"path": str(data), "n_valid": 10, **data_keys},
                       model=model or FAR_MODEL,
                       schedule={"batch_size": 8, "epochs": 1, "pretrain_stages": [[1, 1.0]],
                                 "finetune_stages": [[1, 1.0]]})
    assert main(["train", "--config", str(cfg)]) == 0
    results = json.loads((run / "results.json").read_text())
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--data", str(data),
                 "--out", str(out), "--plots", "2"]) == 0
    return results, json.loads((out / "metrics.json").read_text())


def saved_net(tmp_path: Path) -> dict:
    return torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["model_config"]["net"]


def test_shard_records_the_port_grid_and_old_data_sets_have_none(converted):
    grid = read_manifest(converted).grid
    assert (grid.angles, grid.target, grid.image_points, grid.image_index, grid.farfield_sign) == \
        ("endpoint", "cartesian", "nodes", "xy", None)
    assert (grid.k, grid.image_extent, grid.n_obs, grid.image_size) == (8.0, 2.0, 16, 16)
    assert read_manifest(FIXTURE_DATA).grid is None


def test_converted_port_file_trains_and_evaluates_on_relative_errors(converted, tmp_path):
    results, metrics = train_and_evaluate(converted, tmp_path, {"input": "farfield", "target": "image",
                                                                "use_imag": False})
    test = results["errors"]["test"]
    assert set(test) == {"rel_l2", "rel_l1", "psnr"} and test["rel_l2"]["count"] == 20
    assert results["selection_metric"] == "rel_l2" and results["target"] == "cartesian"
    assert saved_net(tmp_path)["bc_padding"] == "zero"                # auto on the endpoint grid
    assert np.isclose(metrics["metrics"]["rel_l2"]["mean"], test["rel_l2"]["mean"], rtol=1e-5)
    assert (tmp_path / "eval" / "samples.png").is_file()


def test_real_and_imaginary_parts_double_the_detector_axis(converted, tmp_path):
    results, _ = train_and_evaluate(converted, tmp_path, {"input": "farfield", "target": "image", "use_imag": True})
    ck = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert ck["model_config"]["net"]["n_input"] == [16, 32] and ck["model_config"]["input"] == "farfield.real"
    assert results["errors"]["test"]["rel_l1"]["count"] == 20


@pytest.mark.parametrize("angles", ["periodic", "endpoint"])
def test_generated_far_field_data_train_on_both_grids(angles, tmp_path):
    data = tmp_path / "data"
    cfg = dataclasses.replace(demo_gaussian_config((0.05, 0.1), 40, samples_per_shard=20), Na=16, layout="farfield",
                              angles=angles, image_size=16)
    cfg.validate()
    generate(cfg, data, progress=False)
    store_statistics(data)
    write_splits(data, 0.75, val=10)
    assert read_manifest(data).grid.angles == angles
    results, metrics = train_and_evaluate(data, tmp_path, {"input": "farfield", "target": "image",
                                                           "use_imag": True})
    assert saved_net(tmp_path).get("bc_padding", "period") == {"periodic": "period", "endpoint": "zero"}[angles]
    assert results["selection_metric"] == "rel_l2" and "weighted" not in metrics["metrics"]
    assert np.isfinite(results["errors"]["test"]["rel_l2"]["mean"])


def sized_model(cfg, n_input, n_output) -> ScatteringModel:
    """BCR-Net of `cfg`'s model section resolved for data of these sizes on an endpoint grid."""
    io = NetworkIO(n_input=n_input, n_output=n_output, parts="real", target_kind="cartesian", periodic=False)
    return ScatteringModel(BCRNet(**BCRNet.resolve(cfg.model, io)), antipodal=False, use_imag=False,
                           input="farfield.real", target="image", data_input=n_input, data_output=n_output)


def test_pad_to_keeps_the_padding_out_of_the_loss_and_every_metric(converted, tmp_path):
    cfg = TrainConfig()
    cfg.model.alpha, cfg.model.n_cnn, cfg.model.n_cnn3, cfg.model.pad_to = 2, 1, 2, [32, 24]
    cfg.data.antipodal, cfg.data.use_imag = False, False
    model = sized_model(cfg, (16, 16), (16, 16))
    assert model.net.n_input == (32, 24) and model.net.levels == 3 and model.padded
    with torch.no_grad():
        for conv in model.net.refine:
            conv.bias.fill_(0.5)
    x, y = torch.randn(4, 16, 16), torch.rand(4, 16, 16)
    full = model.net(torch.nn.functional.pad(x, (0, 8, 0, 16)))            # the network on the padded input
    pred = model(x)
    assert pred.shape == (4, 16, 16) and torch.equal(pred, full[:, :16, :16])
    padded_target = torch.nn.functional.pad(y, (0, 8, 0, 16))
    assert full[:, 16:].abs().max() > 0                                      # the padding is predicted non-zero
    counted = relative_l2(full, padded_target)                               # what scoring the padding would give
    assert not torch.allclose(counted, relative_l2(pred, y))
    mask = torch.zeros(32, 24, dtype=torch.bool)
    mask[:16, :16] = True
    assert torch.allclose(relative_l2(full, padded_target, mask), relative_l2(pred, y))
    # and a run with pad_to reports the same error for its best model as an evaluation of the unpadded output
    results, metrics = train_and_evaluate(converted, tmp_path, {"input": "farfield", "target": "image",
                                                                "use_imag": False},
                                          model={**FAR_MODEL, "pad_to": [32, 24]})
    assert np.isclose(metrics["metrics"]["rel_l2"]["mean"], results["errors"]["test"]["rel_l2"]["mean"], rtol=1e-5)
    # bcrdist.load_model rebuilds the padded network and predicts at the data's size, as evaluate did
    loaded = bcrdist.load_model(tmp_path / "run" / "checkpoints" / "best.pt")
    assert loaded.net.n_input == (32, 24) and loaded.padded and loaded.net.bc_padding == "zero"
    with h5py.File(tmp_path / "eval" / "predictions.h5", "r") as fh:
        index, pred_eta = fh["index"][:], fh["pred_eta"][:]
    parts = []
    for shard in sorted(converted.glob("shard-*.h5")):
        with h5py.File(shard, "r") as fh:
            parts.append(fh["farfield"][:])
    farfield = np.concatenate(parts)
    eta = loaded.predict_eta(farfield[index])
    assert len(index) > 0 and eta.shape == (len(index), 16, 16)
    np.testing.assert_allclose(eta, pred_eta, rtol=1e-5, atol=1e-6)


def test_sizes_not_a_multiple_of_2_to_the_levels_use_fewer_levels():
    cfg = TrainConfig()
    cfg.data.antipodal, cfg.data.use_imag = False, False
    model = sized_model(cfg, (100, 100), (100, 100))
    assert model.net.levels == 2                    # as the port at 100 directions (⌊log2 100⌋ − 4)
    cfg.model.pad_to = [128, 128]
    assert sized_model(cfg, (100, 100), (100, 100)).net.levels == 5


@pytest.mark.parametrize("sets, message", [
    (["data.input=farfield"], "data.use_imag: the input 'farfield' is complex"),
    (["data.input=measure"], "data.input: the data set"),
    (["data.input=farfield", "data.use_imag=false", "data.target=coe"], "data.target: the data set"),
    (["data.input=farfield", "data.use_imag=false", "data.antipodal=true"], "data.antipodal: the antipodal"),
    (["data.input=farfield", "data.use_imag=false", "schedule.metric=weighted"], "schedule.metric: 'weighted'"),
    (["data.input=farfield", "data.use_imag=false", "model.levels=5"], "model.levels: Ns=16"),
    (["data.input=farfield", "data.use_imag=false", "model.pad_to=[8,8]"], "model.pad_to: [8, 8]"),
])
def test_bad_choices_are_one_line_and_write_nothing(converted, tmp_path, capsys, sets, message):
    run = tmp_path / "run"
    args = ["train", "--set", f"data.path={converted}", "--set", f"run_dir={run}", "--set", "data.target=image"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("bcrdist train: error:") and message in err, err
    assert not run.exists()


def test_the_ports_flags_map_onto_keys():
    import argparse

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    sets = original_flag_overrides(parser.parse_args(["--port", "--epoch", "7", "--data-path", "d"]))
    assert sets == ["schedule.batch_size=16", "schedule.loss_weights=[0.5, 0.5]", "data.input=farfield",
                    "data.target=image", "data.use_imag=false", "data.antipodal=false", "schedule.epochs=7",
                    "data.percent=0.7499999999999999", "data.path=d/merged_data"]
    plain = original_flag_overrides(parser.parse_args(["--batch-size", "4"]))
    assert plain == ["schedule.batch_size=4"]
