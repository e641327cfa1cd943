"""The study's networks (CNN, CNNB, the study's BCNN, NIO) through the same pipeline as BCR-Net: a two-rank
torchrun training each, a run killed and resumed that ends with the uninterrupted run's weights bit for bit
(bcrdist's BCNN too), `bcrdist evaluate` agreeing with the run's own test error, `bcrdist predict` on the far
field, the checkpoint's state without the Born layer's tensors (rebuilt from its definition on load) and the
Born layer of CNNB and the study's BCNN equal to `bcrdist baseline --method lsqr` with their damping; NIO with
the study's min–max normalisation. Tiny sizes: a 16 × 16 image from 16 directions."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest
import torch

import bcrdist
from bcrdist.config import load_config
from bcrdist.data.format import read_manifest
from bcrdist.data.generate import generate
from bcrdist.metrics import relative_l2
from bcrdist.transforms import network_input
from bcrdist.data.splits import write_splits
from bcrdist.data.stats import store_statistics
from bcrdist.models.checkpoint import load_checkpoint
from bcrdist.train.baseline import load
from bcrdist.train.config import TrainConfig
from bcrdist.train.model_setup import build_model
from bcrdist.train.plan import make_plan
from bcrdist.train.training_data import TrainingData
from generation_helpers import demo_gaussian_config
from train_helpers import (assert_same_weights, bcrdist as run_bcrdist, final_weights, finish, kill_training_at_step,
                           one_process, start_bcrdist, torchrun, write_config)

TINY = {
    "cnn": {"type": "cnn", "cnn": {"channels": [4, 6], "widths": [24]}},
    "cnnb": {"type": "cnnb", "cnnb": {"channels": [4, 6], "widths": [24]}},
    "study_bcnn": {"type": "study_bcnn", "study_bcnn": {"channels": [4, 6], "widths": [24]}},
    "nio": {"type": "nio", "nio": {"trunk_layers": 2, "width": 16, "n_basis": 8, "fno_width": 8, "fno_modes": 4}},
}
RESUMED = {**TINY, "bcnn": {"type": "bcnn", "bcnn": {"channels": 4, "depth": 1}}}
NORMALIZATION = {"nio": "minmax"}            # the study's NIO normalised its input and output by min–max
SCHEDULE = {"batch_size": 4, "epochs": 2, "pretrain_stages": [[1, 1.0], [2, 0.5]], "finetune_stages": [[2, 1.0]]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cfg = dataclasses.replace(demo_gaussian_config((0.05, 0.1), 48, samples_per_shard=16), Na=16,
                              layout="farfield", angles="endpoint", image_size=16)
    cfg.validate()
    root = tmp_path_factory.mktemp("study") / "ds"
    generate(cfg, root, progress=False)
    store_statistics(root)
    write_splits(root, 0.5, val=8)
    return root


def config(tmp_path, data, name, network, **sections):
    return write_config(tmp_path / f"{name}.yaml", data, tmp_path / name,
                        data={"path": str(data), "n_valid": 8, "input": "farfield", "use_imag": True,
                              "target": "image", "noise": 5.0, "noise_model": "complex",
                              "normalization": NORMALIZATION.get(network, "rms")},
                        model=RESUMED[network], schedule=SCHEDULE, results_table=None,
                        **{"checkpoint": {"every_steps": 3}, **sections})


@pytest.mark.parametrize("network", list(TINY))
def test_two_rank_torchrun_training_evaluate_and_predict(data, tmp_path, network):
    cfg = config(tmp_path, data, "run", network)
    result = torchrun(2, "train", "--config", str(cfg))
    run_dir = tmp_path / "run"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["model"]["type"] == network
    assert np.isfinite(results["errors"]["test"]["rel_l2"]["mean"])
    log = (run_dir / "train.log").read_text()
    assert f"{network}: {results['parameters']:,} parameters" in log, result.stdout
    best = run_dir / "checkpoints" / "best.pt"
    ck = load_checkpoint(best)
    assert not any(".born." in key for key in ck["model"])              # the Born layer travels as its definition
    born = ck["model_config"]["net"].get("born")
    assert (born is not None) == (network in ("cnnb", "study_bcnn"))
    if born is not None:
        assert born["method"] == "lsqr" and results["model"]["born"]["damp"] == born["parameter"]
    out = tmp_path / "eval"
    # evaluate, predict and (for a Born layer) the baseline are independent: they run at the same time
    evaluating = start_bcrdist("evaluate", "--checkpoint", best, "--data", data, "--out", out, "--plots", "1",
                               "--noise", "5", "--noise-model", "complex")
    # predict: the far field of the test samples, noise-free, through the CLI and through load_model
    F, target, index = load(data, "test", target="image")
    with h5py.File(tmp_path / "input.h5", "w") as fh:
        fh["farfield"] = F
    predicting = start_bcrdist("predict", "--checkpoint", best, "--input", tmp_path / "input.h5", "--out",
                               tmp_path / "pred.h5")
    doc = tmp_path / "lsqr.json"
    baseline = born and start_bcrdist("baseline", "--data", data, "--method", "lsqr", "--damp", born["parameter"],
                                      "--out", doc)
    finish(evaluating)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    # the same weights and buffers on both ranks (NIO's BatchNorm statistics: rank 0's), other batches only
    assert metrics["rel_l2"]["mean"] == pytest.approx(results["errors"]["test"]["rel_l2"]["mean"], rel=1e-6)
    finish(predicting)
    with h5py.File(tmp_path / "pred.h5", "r") as fh:
        pred = fh["pred"][:]
    model = bcrdist.load_model(best)
    assert pred.shape == target.shape
    np.testing.assert_allclose(pred, model.predict_eta(F), rtol=1e-5, atol=1e-6)
    if born is not None:
        # the network's Born layer (rebuilt on load) is `bcrdist baseline --method lsqr` at its damping
        finish(baseline)
        with torch.no_grad():
            eta = model.net.born(torch.from_numpy(network_input(F.real, F.imag)).float()).double()
        rel = float(relative_l2(eta, torch.from_numpy(target).double()).mean())
        assert rel == pytest.approx(json.loads(doc.read_text())["metrics"]["rel_l2"]["mean"], rel=1e-6)


@pytest.mark.parametrize("network", list(RESUMED))
def test_a_killed_and_resumed_run_ends_with_the_uninterrupted_runs_weights(data, tmp_path, network):
    """SIGKILL after a checkpoint in the middle of an epoch (4 steps an epoch in the first stage, a checkpoint
    every 5), then `--resume auto`: the reader, the optimizer, the generators and a BatchNorm's statistics all
    continue where last.pt left them."""
    every = {"every_steps": 5}
    # the uninterrupted run (one thread, deterministic) goes on while the other is killed and resumed
    full = start_bcrdist("train", "--config", config(tmp_path, data, "full", network, checkpoint=every))
    part = config(tmp_path, data, "part", network, checkpoint=every)
    killed_at = kill_training_at_step(part, tmp_path / "part", 5)
    assert killed_at["step"] % 4, "killed at an epoch boundary: the test wants the middle of an epoch"
    run_bcrdist("train", "--config", str(part), "--resume", "auto")
    finish(full)
    assert "resumed from" in (tmp_path / "part" / "train.log").read_text()
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "part"), atol=0)
    a, b = (json.loads((tmp_path / name / "results.json").read_text())["errors"]["test"]["rel_l2"]["mean"]
            for name in ("full", "part"))
    assert a == b


@pytest.mark.parametrize("sets, message", [
    (["model.type=cnn", "model.cnn.channels=[4,4,4]"],
     "model.cnn.channels: 3 conv+pool layers take a 16×16 far field down to 0×0"),
    (["model.type=cnnb", "data.use_imag=false"], "model.type: cnnb reconstructs from the complex far field"),
    (["model.type=nio", "model.nio.fno_modes=11"], "model.nio.fno_modes: 11 Fourier modes do not fit"),
    (["model.type=study_bcnn", "model.study_bcnn.damp=0"], "model.study_bcnn.damp"),
    (["model.type=cnn", "model.pad_to=[32,32]"], "model.pad_to: applies to BCR-Net only"),
])
def test_what_a_study_network_cannot_take_is_one_line_before_the_run_directory(data, tmp_path, sets, message):
    run_dir = tmp_path / "run"
    args = ["train", "--set", f"data.path={data}", "--set", f"run_dir={run_dir}", "--set", "data.input=farfield",
            "--set", "data.use_imag=true", "--set", "data.target=image"]
    for item in sets:
        args += ["--set", item]
    result = run_bcrdist(*args, check=False)
    err = result.stderr.strip()
    assert result.returncode == 2 and "\n" not in err and message in err, err
    assert not run_dir.exists()


def test_the_studys_minmax_normalisation_maps_input_and_output_to_minus_one_one(data, tmp_path):
    """data.normalization minmax: Re F and Im F of the first training samples fill [−1, 1] after the model's
    input normalisation, and the network's −1 and +1 come out as the target's minimum and maximum over the
    data set (in physical units)."""
    cfg = load_config(config(tmp_path, data, "run", "nio"), TrainConfig)
    plan = make_plan(cfg, read_manifest(data), 1)
    training = TrainingData(cfg, one_process(), plan)
    model = build_model(plan.model, training, one_process())
    x = torch.cat([torch.from_numpy(a).float().reshape(-1, 16, 32) for a in training.statistics_inputs()])
    normalised = (x - model.in_shift) / model.in_scale
    for part in (normalised[..., :16], normalised[..., 16:]):              # Re F, Im F
        assert float(part.min()) == pytest.approx(-1, abs=1e-5) and float(part.max()) == pytest.approx(1, abs=1e-5)
    stats = read_manifest(data).field_statistics("image")
    eta = (torch.tensor([-1.0, 1.0]) * model.out_gain + model.out_bias) * model.out_scale
    assert eta.tolist() == pytest.approx([stats["min"], stats["max"]], rel=1e-5)
    assert model.record()["normalization"] == "minmax"
