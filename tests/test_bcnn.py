"""BCNN (`bcrdist.models.bcnn`, its Born layer fitted by `bcrdist.train.born_fit`): the reconstruction matrix
equals the Tikhonov inversion's `predict` on both target kinds; the Born layer of a run equals `bcrdist
baseline`'s reconstruction at the λ the baseline chooses (same λ, same estimates, same test error); the model is
differentiable end to end with the Born layer fixed and outside the state dict; a one-process training +
`bcrdist evaluate` + `load_model` rebuilding the layer from its definition; a 2-rank torchrun run whose ranks
hold the same layer; one-line refusals of inputs BCNN cannot read."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import textwrap

import numpy as np
import pytest
import torch

import bcrdist
from bcrdist.cli import main
from bcrdist.config import load_config
from bcrdist.data.format import read_manifest
from bcrdist.data.generate import generate
from bcrdist.data.grid import grid_from_manifest
from bcrdist.data.splits import write_splits
from bcrdist.data.stats import store_statistics
from bcrdist.metrics import relative_l2
from bcrdist.models.bcnn import PostCorrection
from bcrdist.models.checkpoint import load_checkpoint
from bcrdist.physics.born import BornInversion, CartesianBornInversion, noisy_far_field
from bcrdist.physics.layout import GridInfo
from bcrdist.train.baseline import load
from bcrdist.train.config import TrainConfig
from bcrdist.train.optim import make_optimizer
from bcrdist.physics.born_definition import BornDefinition
from bcrdist.train.model_setup import build_model, model_from_plan
from bcrdist.train.plan import make_plan
from bcrdist.train.training_data import TrainingData
from bcrdist.transforms import network_input
from generation_helpers import demo_gaussian_config
from train_helpers import BIN, bcrdist as bcrdist_cli, one_process, run, write_config

TINY_BCNN = {"type": "bcnn", "bcnn": {"channels": 4, "depth": 1}}
TARGETS = {"cartesian": "image", "polar": "coe"}
SCHEDULE = {"batch_size": 4, "epochs": 1, "pretrain_stages": [[1, 1.0]], "finetune_stages": [[1, 1.0]]}


def far_field(rng, shape) -> np.ndarray:
    return rng.standard_normal((3, *shape)) + 1j * rng.standard_normal((3, *shape))


def stacked(F: np.ndarray) -> np.ndarray:
    """(B, n_obs, n_inc) complex → (B, 2·n_entries): [Re F.ravel(), Im F.ravel()]."""
    return np.concatenate([F.real.reshape(len(F), -1), F.imag.reshape(len(F), -1)], axis=1)


@pytest.mark.parametrize("entries", ["farfield", "measure"])
def test_polar_reconstruction_matrix_equals_predict(entries):
    inv = BornInversion(4 * np.pi, 16, 8, 0.5, entries=entries)
    F = far_field(np.random.default_rng(1), (16, 16))
    for relative in (1e-6, 1e-2):
        lam = relative * inv.sigma_max ** 2
        M = inv.reconstruction_matrix(lam, chunk=100)
        assert M.shape == (16 * 8, 2 * 16 * 16) and M.dtype == np.float64
        want = inv.predict(F, lam).reshape(3, -1)
        assert np.abs(stacked(F) @ M.T - want).max() <= 1e-12 * np.abs(want).max()


@pytest.mark.parametrize("angles, sign, index", [("periodic", -1, "xy"), ("endpoint", 1, "xy"), ("endpoint", -1, "yx")])
def test_cartesian_reconstruction_matrix_equals_predict(angles, sign, index):
    grid = GridInfo(k=4 * np.pi, angles=angles, n_obs=12, n_inc=10, target="cartesian", image_size=9,
                    image_extent=1.0, image_points="centres", image_index=index, farfield_sign=sign)
    inv = CartesianBornInversion(grid)
    F = far_field(np.random.default_rng(2), (12, 10))
    for relative in (1e-8, 1e-3):
        lam = relative * inv.sigma_max ** 2
        M = inv.reconstruction_matrix(lam, chunk=7)
        assert M.shape == (81, 240)
        want = inv.predict(F, lam).reshape(3, -1)
        assert np.abs(stacked(F) @ M.T - want).max() <= 1e-10 * np.abs(want).max()
    with pytest.raises(ValueError, match="no λ"):
        inv.reconstruction_matrix()


def make_data(root, kind: str):
    base = demo_gaussian_config((0.05, 0.1), 40, samples_per_shard=20)
    if kind == "cartesian":
        cfg = dataclasses.replace(base, Na=16, layout="farfield", angles="periodic", image_size=16)
    else:
        cfg = dataclasses.replace(base, Na=16, Nr=8)
    cfg.validate()
    data = root / kind
    generate(cfg, data, progress=False)
    store_statistics(data)
    write_splits(data, 0.5, val=10)
    return data


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("bcnn")
    return {kind: make_data(root, kind) for kind in TARGETS}


def run_config(tmp_path, data_dir, kind, data=None, **sections):
    """A tiny BCNN config on `data_dir`; `data`/`sections` add keys."""
    return write_config(tmp_path / "bcnn.yaml", data_dir, tmp_path / "run",
                        data={"path": str(data_dir), "n_valid": 10, "input": "farfield", "use_imag": True,
                              "target": TARGETS[kind], **(data or {})},
                        model=TINY_BCNN, schedule=SCHEDULE, results_table=None, **sections)


@pytest.mark.parametrize("kind", list(TARGETS))
def test_born_layer_equals_the_baseline(datasets, tmp_path, kind):
    data = datasets[kind]
    out = tmp_path / "baseline.json"
    bcrdist_cli("baseline", "--data", str(data), "--noise", "1", "--seed", "0", "--out", str(out))
    doc = json.loads(out.read_text())

    # input_shift: the layer must undo a shift as well as a scale
    cfg = load_config(run_config(tmp_path, data, kind, data={"noise": 1.0, "input_shift": True}), TrainConfig)
    plan = make_plan(cfg, read_manifest(data), 1)
    model = build_model(plan.model, TrainingData(cfg, one_process(), plan), one_process())
    assert model.in_shift.abs().max() > 0.1 * model.in_scale.min()
    record = model.net.fit_record()
    assert record["lambda"] == doc["lambda"] and record["lambda_relative"] == pytest.approx(doc["lambda_relative"])
    assert model.net.born.definition.parameter == doc["lambda"]
    metric = {"cartesian": "rel_l2", "polar": "weighted"}[kind]
    assert record["selection_metric"] == metric and record["val_error"] == pytest.approx(doc[f"val_{metric}"])

    # the layer on the pipeline's input (normalised Re F | Im F) = the baseline's inversion at its λ
    F, target, index = load(data, "test", target=TARGETS[kind])
    grid = grid_from_manifest(read_manifest(data))
    inv = (CartesianBornInversion(grid) if kind == "cartesian"
           else BornInversion(grid.k, grid.n_obs, grid.polar_nr, grid.polar_radius))
    F_noisy = noisy_far_field(F, 1.0, index, 0)
    x_raw = torch.from_numpy(network_input(F_noisy.real, F_noisy.imag)).float()
    with torch.no_grad():
        born = model.net.born(x_raw)                                        # raw [Re F | Im F] → η
    want = inv.predict(F_noisy, doc["lambda"])
    assert born.shape == want.shape
    assert np.abs(born.numpy() - want).max() <= 1e-5 * np.abs(want).max()
    rel = relative_l2(born.double(), torch.from_numpy(target).double()).mean()
    assert float(rel) == pytest.approx(doc["metrics"]["rel_l2"]["mean"], rel=1e-5)
    # untrained, BCNN is its Born layer (zero-initialised output convolution); the float32 normalisation of the
    # input and its inverse round at 1e-7, which the small λ amplifies
    with torch.no_grad():
        assert torch.allclose(model(x_raw) * model.out_scale, born, rtol=0, atol=1e-4 * float(born.abs().max()))


def test_bcnn_is_differentiable_and_its_born_layer_is_fixed(datasets, tmp_path):
    data = datasets["cartesian"]
    cfg = load_config(run_config(tmp_path, data, "cartesian"), TrainConfig)
    model = model_from_plan(make_plan(cfg, read_manifest(data), 1).model)     # not fitted: the layer is set here
    born = model.net.born
    model.net.set_born(BornDefinition(grid_from_manifest(read_manifest(data)), "tikhonov", 0.5), {"lambda": 0.5})
    tensors = {name: t.clone() for name, t in born.named_buffers()}
    assert tensors and not any(".born." in key for key in model.state_dict())      # stored by its definition
    params = make_optimizer(cfg, model.parameters(), 1e-2).param_groups[0]["params"]
    assert len(params) == len(list(model.net.post.parameters()))
    x = torch.randn(3, 16, 32, requires_grad=True)
    y = torch.randn(3, 16, 16)
    out, aux = model(x, return_aux=True)
    assert out is aux and out.shape == (3, 16, 16)
    torch.nn.functional.mse_loss(out, y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0            # through the Born layer to the input
    assert model.net.post.out.weight.grad.abs().sum() > 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.step()
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net.post.parameters())
    assert all(torch.equal(t, tensors[name]) for name, t in born.named_buffers())


def test_a_given_lambda_is_used_as_it_is(datasets, tmp_path):
    data = datasets["cartesian"]
    cfg = load_config(run_config(tmp_path, data, "cartesian"), TrainConfig,
                      overrides=["model.bcnn.born_lambda=2.5", "model.bcnn.norm=euclidean"])
    plan = make_plan(cfg, read_manifest(data), 1)
    model = build_model(plan.model, TrainingData(cfg, one_process(), plan), one_process())
    record = model.net.fit_record()
    assert record["lambda"] == 2.5 and record["lambda_source"] == "model.bcnn.born_lambda"
    F, _, _ = load(data, "test", target="image")
    want = CartesianBornInversion(grid_from_manifest(read_manifest(data)), norm="euclidean").predict(F, 2.5)
    with torch.no_grad():
        got = model.net.born(torch.from_numpy(network_input(F.real, F.imag)).float())
    assert np.abs(got.numpy() - want).max() <= 1e-5 * np.abs(want).max()


def test_polar_post_correction_is_periodic_in_the_angle():
    # seeded: with 3 channels an unlucky draw leaves every ReLU dead and both outputs zero (then the test
    # would depend on the order the suite runs in)
    torch.manual_seed(3)
    post = PostCorrection(channels=3, depth=2, periodic_rows=True)
    torch.nn.init.normal_(post.out.weight)
    x = torch.randn(2, 1, 16, 8)
    with torch.no_grad():
        assert post(x).abs().max() > 0
        assert torch.allclose(post(torch.roll(x, 4, dims=2)), torch.roll(post(x), 4, dims=2), atol=1e-5)
        zero_padded = PostCorrection(channels=3, depth=2)
        zero_padded.load_state_dict(post.state_dict())
        assert not torch.allclose(zero_padded(torch.roll(x, 4, dims=2)), torch.roll(zero_padded(x), 4, dims=2),
                                  atol=1e-3)


def test_one_process_training_and_evaluate(datasets, tmp_path):
    data = datasets["cartesian"]
    assert main(["train", "--config", str(run_config(tmp_path, data, "cartesian"))]) == 0
    run_dir = tmp_path / "run"
    results = json.loads((run_dir / "results.json").read_text())
    ck = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert results["model"]["type"] == "bcnn" and ck["model_config"]["type"] == "bcnn"
    lam = results["model"]["born"]["lambda"]
    assert ck["model_config"]["fit"]["lambda"] == lam and ck["model_config"]["net"]["born"]["parameter"] == lam
    assert not any(".born." in key for key in ck["model"])
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "best.pt"), "--data", str(data),
                 "--out", str(out), "--plots", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["rel_l2"]["mean"] == pytest.approx(results["errors"]["test"]["rel_l2"]["mean"], rel=1e-5)
    model = bcrdist.load_model(run_dir / "checkpoints" / "best.pt")
    assert model.model_type == "bcnn" and model.net.fit_record()["lambda"] == lam
    assert model.net.born.definition.parameter == lam                        # rebuilt from its definition
    F, target, _ = load(data, "test", target="image")
    eta = model.predict_eta(F)
    assert eta.shape == target.shape
    rel = relative_l2(torch.from_numpy(eta).double(), torch.from_numpy(target).double()).mean()
    assert float(rel) == pytest.approx(metrics["rel_l2"]["mean"], rel=1e-4)


RANK_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    from pathlib import Path
    from bcrdist.config import load_config
    from bcrdist.data.format import read_manifest
    from bcrdist.distributed import init_distributed, shutdown_distributed
    from bcrdist.train.config import TrainConfig
    from bcrdist.train.plan import make_plan
    from bcrdist.train.trainer import Trainer

    cfg = load_config(sys.argv[1], TrainConfig)
    ctx = init_distributed("cpu")
    trainer = Trainer(cfg, ctx, make_plan(cfg, read_manifest(cfg.data.path), ctx.world_size))
    digest = hashlib.sha256()
    for name, tensor in trainer.model.net.born.named_buffers():
        digest.update(name.encode() + tensor.numpy().tobytes())
    lam = trainer.model.net.born.definition.parameter
    Path(cfg.run_dir, f"matrix-rank{ctx.rank}.txt").write_text(f"{digest.hexdigest()} {lam}")
    trainer.run()
    shutdown_distributed()
""")


def test_torchrun_two_ranks_hold_the_same_born_layer(datasets, tmp_path):
    data = datasets["polar"]
    cfg = run_config(tmp_path, data, "polar", runtime={"compile": "false", "threads": 1, "device": "cpu"})
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", str(script), str(cfg)], timeout=300)
    run_dir = tmp_path / "run"
    digests = [(run_dir / f"matrix-rank{r}.txt").read_text().split() for r in range(2)]
    assert digests[0] == digests[1]                             # rank 0's definition, rank 0's bytes
    ck = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert not any(".born." in key for key in ck["model"])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["model"]["born"]["lambda"] == float(digests[0][1]) > 0
    assert np.isfinite(results["errors"]["test"]["weighted"]["mean"])


@pytest.mark.parametrize("sets, message", [
    (["data.use_imag=false"], "model.type: bcnn reconstructs from the complex far field"),
    (["data.input=farfield.real", "data.use_imag=false"], "model.type: bcnn reconstructs from the complex far"),
    (["model.pad_to=[16,16]"], "model.pad_to: applies to BCR-Net only"),
    (["model.bcnn.kernel=4"], "model.bcnn.kernel: must be odd"),
])
def test_bad_bcnn_choices_are_one_line_and_write_nothing(datasets, tmp_path, capsys, sets, message):
    run_dir = tmp_path / "run"
    args = ["train", "--set", f"data.path={datasets['cartesian']}", "--set", f"run_dir={run_dir}",
            "--set", "data.target=image", "--set", "data.input=farfield", "--set", "data.use_imag=true",
            "--set", "model.type=bcnn"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("bcrdist train: error:") and message in err, err
    assert not run_dir.exists()


def test_bcnn_on_measure_input_is_refused(tmp_path, capsys, datasets):
    run_dir = tmp_path / "run"
    args = ["train", "--set", f"data.path={datasets['polar']}", "--set", f"run_dir={run_dir}",
            "--set", "model.type=bcnn"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "data.input 'measure'" in err and not run_dir.exists(), err
