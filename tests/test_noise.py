"""The noise models (`bcrdist.noise`): each model's statistics on large draws, per-sample seeding independent
of batching and rank, `fan`'s draws equal to the original pipeline's, the models acting on the complex far
field before the layout (Fan's `measure` layout included), `bcrdist evaluate` and `bcrdist baseline` seeing the
same noisy far field, training and evaluation noise set independently, and one-line refusals."""

from __future__ import annotations

import dataclasses
import itertools
import json
import typing

import h5py
import numpy as np
import pytest
import torch

from bcrdist import noise
from bcrdist.cli import main
from bcrdist.config import load_config, to_dict
from bcrdist.data import Preprocess, ShardedDataset
from bcrdist.data.format import read_manifest
from bcrdist.data.generate import generate
from bcrdist.data.splits import write_splits
from bcrdist.data.stats import store_statistics
from bcrdist.errors import ConfigError
from bcrdist.models.checkpoint import save_model
from bcrdist.paired import compare
from bcrdist.physics.born import CartesianBornInversion, noisy_far_field
from bcrdist.metrics import relative_l2
from bcrdist.train.config import DataConfig, TrainConfig
from bcrdist.train.run_dir import config_changes
from bcrdist.train.plan import reader_specs, resolve_data
from bcrdist.transforms import antipodal, network_input
from data_helpers import make_reader_dataset
from generation_helpers import demo_gaussian_config
from train_helpers import final_weights, make_dataset, planned_model, write_config

# the original pipeline's seed streams (per-epoch draw, fixed draw), as literals: `fan` must keep them
LEGACY_STREAM, LEGACY_FIXED_STREAM = 0x4E4F4953, 0x4E4F4658


def far_field(shape=(300, 200), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.5, 2, shape) * np.exp(2j * np.pi * rng.uniform(size=shape))).astype(np.complex128)


# ------------------------------------------------------------------------------------------ the models' statistics
def test_fan_is_real_multiplicative_on_re_and_im_separately():
    F = far_field()
    out = noise.apply_noise(F, "fan", 10, np.random.default_rng(1))
    e_re, e_im = (out.real / F.real - 1) / 0.1, (out.imag / F.imag - 1) / 0.1
    for e in (e_re, e_im):
        assert abs(e.mean()) < 0.02 and abs(e.var() - 1) < 0.03
    assert abs(np.corrcoef(e_re.ravel(), e_im.ravel())[0, 1]) < 0.02          # independent parts
    ref = np.random.default_rng(1)                                              # Re's ε first, then Im's
    np.testing.assert_allclose(e_re, ref.standard_normal(F.shape), atol=1e-9)
    np.testing.assert_allclose(e_im, ref.standard_normal(F.shape), atol=1e-9)
    x = F.real.astype(np.float32)                                               # a real array: on it
    y = noise.apply_noise(x, "fan", 10, np.random.default_rng(2))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x * (1 + np.float32(0.1) * np.random.default_rng(2).standard_normal(x.shape)
                                          .astype(np.float32)))


def test_complex_is_multiplicative_with_circular_standard_normal():
    F = far_field()
    out = noise.apply_noise(F, "complex", 20, np.random.default_rng(3))
    Z = (out / F - 1) / 0.2
    assert abs(Z.mean()) < 0.01
    assert abs(np.mean(np.abs(Z) ** 2) - 1) < 0.02                              # E|Z|² = 1
    assert abs(np.mean(Z ** 2)) < 0.01                                          # E Z² = 0: circular
    assert abs(Z.real.var() - 0.5) < 0.01 and abs(Z.imag.var() - 0.5) < 0.01
    assert abs(np.mean(Z.real * Z.imag)) < 0.01
    ref = np.random.default_rng(3).standard_normal((2, *F.shape))
    np.testing.assert_allclose(Z, (ref[0] + 1j * ref[1]) / np.sqrt(2), atol=1e-9)


def test_additive_is_relative_to_the_samples_norm():
    F = far_field()
    F[:, :50] *= 10                                                             # uneven entries: ‖F‖ not entrywise
    out = noise.apply_noise(F, "additive", 5, np.random.default_rng(4))
    N = out - F
    assert np.linalg.norm(N) / np.linalg.norm(F) == pytest.approx(0.05, rel=0.01)
    Z = N / (0.05 * np.linalg.norm(F) / np.sqrt(F.size))
    assert abs(Z.mean()) < 0.01 and abs(np.mean(np.abs(Z) ** 2) - 1) < 0.02 and abs(np.mean(Z ** 2)) < 0.01
    assert abs(np.mean(np.abs(Z[:, :50]) ** 2) - np.mean(np.abs(Z[:, 50:]) ** 2)) < 0.05   # not scaled by |F|
    F32 = F.astype(np.complex64)
    assert noise.apply_noise(F32, "additive", 5, np.random.default_rng(4)).dtype == np.complex64


def test_level_zero_unknown_model_and_real_input():
    F = far_field((4, 4))
    for model in noise.MODELS:
        assert noise.apply_noise(F, model, 0, np.random.default_rng(0)) is F
    with pytest.raises(ConfigError, match=r"^noise_model: expected one of fan, complex, additive, got 'gauss'$"):
        noise.apply_noise(F, "gauss", 1, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="^data.noise_model: "):
        noise.check_model("gauss", "data.noise_model")
    for model in ("complex", "additive"):
        with pytest.raises(ValueError, match="complex far field"):
            noise.apply_noise(F.real, model, 1, np.random.default_rng(0))
    assert typing.get_args(typing.get_type_hints(DataConfig)["noise_model"]) == noise.MODELS


def test_multiplicative_noise_numpy_seeded():
    x = np.random.default_rng(4).uniform(0.5, 2.0, size=(200, 50))
    a = noise.multiplicative_noise(x, 10, np.random.default_rng(7))
    b = noise.multiplicative_noise(x, 10, np.random.default_rng(7))
    c = noise.multiplicative_noise(x, 10, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    eps = (a / x - 1) / 0.10                      # X·(1 + σε) → ε ~ N(0, 1)
    assert abs(eps.mean()) < 0.05 and abs(eps.std() - 1) < 0.05
    np.testing.assert_allclose(eps, np.random.default_rng(7).standard_normal(x.shape), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(noise.multiplicative_noise(x, 0, np.random.default_rng(7)), x)


def test_multiplicative_noise_torch_seeded():
    x = torch.rand(100, 40, dtype=torch.float64) + 0.5
    a = noise.multiplicative_noise(x, 5, torch.Generator().manual_seed(3))
    b = noise.multiplicative_noise(x, 5, torch.Generator().manual_seed(3))
    c = noise.multiplicative_noise(x, 5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    eps = (a / x - 1) / 0.05
    assert abs(eps.mean().item()) < 0.05 and abs(eps.std().item() - 1) < 0.05


# ------------------------------------------------------------------------------------------ seeding per sample
def test_streams_are_distinct_per_model_and_draw():
    words = [w for pair in noise.STREAMS.values() for w in pair]
    assert len(set(words)) == len(words) and noise.STREAMS["fan"] == (LEGACY_STREAM, LEGACY_FIXED_STREAM)
    F = far_field((6, 5, 5))
    idx = np.arange(100, 106)
    draws = {(m, e): noise.noisy_samples(F, m, 10, idx, seed=2, epoch=e) for m in noise.MODELS for e in (None, 1)}
    assert all(not np.array_equal(a, b) for a, b in itertools.combinations(draws.values(), 2))
    for m in noise.MODELS:                        # a sample's draw: (seed, index), not its place in the batch
        perm = np.array([3, 0, 5, 1, 4, 2])
        np.testing.assert_array_equal(noise.noisy_samples(F[perm], m, 10, idx[perm], 2, 1), draws[(m, 1)][perm])
        np.testing.assert_array_equal(noise.noisy_samples(F[2:3], m, 10, idx[2:3], 2), draws[(m, None)][2:3])


def test_level_range_draws_each_samples_level_uniformly():
    """`level_max`: sample i's level is uniform on [level, level_max], drawn from its own Generator just before
    its noise; the draw is the sample's (not its batch position's), and level_max = level is the plain level."""
    n = 4000
    F = np.ones((n, 16), dtype=np.complex128)
    idx = np.arange(n)
    noisy = noise.noisy_samples(F, "additive", 10, idx, seed=1, epoch=0, level_max=50)
    levels = []
    for i in (0, 1, 2):
        rng = np.random.default_rng([noise.STREAMS["additive"][0], 1, 0, i])
        levels.append(rng.uniform(10, 50))
        z = rng.standard_normal((2, 16))
        np.testing.assert_allclose(noisy[i], 1 + levels[-1] / 100 * (z[0] + 1j * z[1]) * np.sqrt(0.5), rtol=1e-12)
    assert len(set(levels)) == 3
    rms = np.sqrt(np.mean(np.abs(noisy - F) ** 2, axis=1)) * 100       # ≈ each sample's level
    assert 29 < np.mean(rms) < 31 and np.percentile(rms, 5) < 16 and np.percentile(rms, 95) > 44
    perm = np.random.default_rng(0).permutation(n)[:50]
    np.testing.assert_array_equal(noise.noisy_samples(F[perm], "additive", 10, idx[perm], 1, 0, 50), noisy[perm])
    np.testing.assert_array_equal(noise.noisy_samples(F[:5], "complex", 20, idx[:5], 1, None, 20),
                                  noise.noisy_samples(F[:5], "complex", 20, idx[:5], 1, None))
    with pytest.raises(ValueError, match="below the level"):
        noise.noisy_samples(F[:2], "complex", 20, idx[:2], 1, None, 10)


def test_noise_max_reaches_the_training_split_only(reader_data, tmp_path):
    """data.noise_max: the training readers draw a level per sample in [noise, noise_max] (at noise 0 the
    data still get noise), validation and test keep the evaluation level; noise_max < noise is refused."""
    root, _ = reader_data
    cfg = load_config(None, TrainConfig, [f"data.path={root}", "data.input=farfield", "data.use_imag=true",
                                          "data.noise=0", "data.noise_max=100", "data.noise_model=complex"])
    manifest = read_manifest(root)
    specs = reader_specs(cfg, resolve_data(cfg, manifest), manifest)
    assert specs["train"].noise_max == specs["train_subset"].noise_max == 100 and specs["eval"].noise_max is None
    got = by_index(root, specs["train"], 1, batch_size=8)
    plain = by_index(root, dataclasses.replace(specs["train"], noise_max=None), 1, batch_size=8)
    assert all(not np.array_equal(got[i], plain[i]) for i in (0, 5, 9))
    with pytest.raises(ConfigError, match=r"data\.noise_max: 1\.0 is below data\.noise 2\.0"):
        load_config(None, TrainConfig, ["data.noise=2", "data.noise_max=1"])


@pytest.fixture(scope="module")
def reader_data(tmp_path_factory):
    return make_reader_dataset(tmp_path_factory.mktemp("reader") / "ds")


def by_index(root, spec, epoch, **kw):
    ds = ShardedDataset(root, preprocess=spec, seed=3, **kw)
    ds.set_epoch(epoch)
    return {int(i): x for b in ds for i, x in zip(b["index"].numpy(), b["input"].numpy())}


@pytest.mark.parametrize("model", noise.MODELS)
@pytest.mark.parametrize("field", ["measure", "farfield.real"])
def test_reader_draws_do_not_depend_on_batches_or_ranks(reader_data, model, field):
    root, _ = reader_data
    spec = Preprocess(input=field, target="coe", noise=5.0, noise_model=model,
                      input_imag="farfield.imag" if field == "farfield.real" else "measure_imag")
    one = by_index(root, spec, 1, batch_size=4)
    ranks = {}
    for rank in range(2):
        ranks.update(by_index(root, spec, 1, batch_size=7, rank=rank, world_size=2, drop_last=False))
    common = sorted(set(one) & set(ranks))
    assert len(common) > 100 and all(np.array_equal(one[i], ranks[i]) for i in common)
    other_epoch = by_index(root, spec, 2, batch_size=4)
    assert not np.array_equal(one[common[0]], other_epoch[common[0]])
    fixed = dataclasses.replace(spec, noise_fixed=True)
    a, b = by_index(root, fixed, 1, batch_size=4), by_index(root, fixed, 2, batch_size=5)
    assert all(np.array_equal(a[i], b[i]) for i in sorted(set(a) & set(b)))


def legacy_noisy(x: np.ndarray, level: float, key) -> np.ndarray:
    """The original pipeline's draw, written out: x·(1 + σε), ε float32 from default_rng(key)."""
    eps = np.random.default_rng(key).standard_normal(x.shape).astype(x.dtype)
    return x * (1 + level / 100 * eps)


def test_fan_keeps_the_pipelines_draws(reader_data):
    root, src = reader_data
    for fixed in (False, True):
        spec = Preprocess(input="measure", input_imag="measure_imag", antipodal=True, target="coe", noise=5.0,
                          noise_fixed=fixed)
        got = by_index(root, spec, 4, batch_size=8)
        for i in (0, 57, 172):
            key = [LEGACY_FIXED_STREAM, 3, i] if fixed else [LEGACY_STREAM, 3, 4, i]
            clean = network_input(src["measure"][i], src["measure_imag"][i], apply_antipodal=True)
            np.testing.assert_array_equal(got[i], legacy_noisy(clean, 5.0, key))
    # the far-field layout's real part (what the port fed BCR-Net): the same draw on Re F
    got = by_index(root, Preprocess(input="farfield.real", target="coe", noise=5.0), 4, batch_size=8)
    for i in (0, 99):
        np.testing.assert_array_equal(got[i], legacy_noisy(src["farfield"][i].real, 5.0, [LEGACY_STREAM, 3, 4, i]))


def complex_z(key, shape) -> np.ndarray:
    z = np.random.default_rng(key).standard_normal((2, *shape))
    return (z[0] + 1j * z[1]) / np.sqrt(2)


def test_complex_models_act_on_the_far_field_before_the_layout(reader_data):
    """`complex` on Fan's layout: on measure + i·measure_imag (read though the network takes measure only),
    before the antipodal map; `additive` takes ‖·‖ and n over the entries measure holds."""
    root, src = reader_data
    stream = noise.STREAMS["complex"][1]
    spec = Preprocess(input="measure", antipodal=True, target="coe", noise=10.0, noise_model="complex",
                      noise_fixed=True)
    got = by_index(root, spec, 0, batch_size=8)
    for i in (3, 120):
        M = src["measure"][i].astype(np.complex64)
        M.imag = src["measure_imag"][i]
        noisy = (M * (1 + 0.1 * complex_z([stream, 3, i], M.shape))).astype(np.complex64)
        np.testing.assert_array_equal(got[i], antipodal(noisy.real))
    spec = Preprocess(input="farfield.real", input_imag="farfield.imag", target="coe", noise=10.0,
                      noise_model="additive", noise_fixed=True)
    got = by_index(root, spec, 0, batch_size=8)
    stream = noise.STREAMS["additive"][1]
    for i in (3, 120):
        F = src["farfield"][i]
        rms = np.sqrt(np.mean(np.abs(F.astype(np.complex128)) ** 2))
        noisy = (F + 0.1 * rms * complex_z([stream, 3, i], F.shape)).astype(np.complex64)
        np.testing.assert_allclose(got[i], np.concatenate([noisy.real, noisy.imag], axis=-1), rtol=1e-6, atol=1e-6)


def test_complex_models_refuse_an_input_without_imaginary_part(tmp_path, capsys):
    data = make_dataset(tmp_path / "real", n=40, val=8)
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", data={"path": str(data), "n_valid": 8,
                                                                          "input": "coe", "target": "coe"})
    rc = main(["train", "--config", str(cfg), "--set", "data.noise=1", "--set", "data.noise_model=complex"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith("bcrdist train: error: data.noise_model: 'complex' noise")
    assert "'coe_imag'" in err and not (tmp_path / "run").exists()
    rc = main(["train", "--config", str(cfg), "--set", "data.noise_model=gauss"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "data.noise_model: expected one of 'fan', 'complex', 'additive'" in err


# ------------------------------------------------------------------------------------------ evaluate vs baseline
@pytest.fixture(scope="module")
def farfield_run(tmp_path_factory):
    """Generated far-field/image data (periodic grid, 16 directions, 16×16 image) and an untrained far-field
    BCR-Net checkpoint on them (real and imaginary parts), written by the run's seed 7."""
    root = tmp_path_factory.mktemp("far")
    data = root / "data"
    gen = dataclasses.replace(demo_gaussian_config((0.05, 0.1), 40, samples_per_shard=20), Na=16,
                              layout="farfield", angles="periodic", image_size=16)
    gen.validate()
    generate(gen, data, progress=False)
    store_statistics(data)
    write_splits(data, 0.5, val=8)
    cfg = load_config(None, TrainConfig, ["seed=7", f"data.path={data}", "data.input=farfield", "data.target=image",
                                          "data.use_imag=true", "model.alpha=2", "model.n_cnn=1", "model.n_cnn3=1"])
    model = planned_model(cfg, data)
    ckpt = save_model(root / "run" / "checkpoints" / "best.pt", model, config=to_dict(cfg))
    return data, ckpt


@pytest.mark.parametrize("model", noise.MODELS)
def test_evaluate_and_baseline_see_the_same_noisy_far_field(farfield_run, tmp_path, capsys, model):
    data, ckpt = farfield_run
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), "--plots", "0",
                 "--noise", "20", "--noise-model", model, "--seed", "5", "--split", "all"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["noise"], metrics["noise_model"], metrics["seed"]) == (20, model, 5)
    with h5py.File(out / "predictions.h5") as fh:
        x, index = fh["input"][()], fh["index"][()]
    src = ShardedDataset(data, shuffle=False, exact=True, batch_size=64, datasets=["farfield", "image"])
    F = np.concatenate([b["farfield"].numpy() for b in src])[index]
    noisy = noisy_far_field(F, 20, index, seed=5, model=model)
    assert len(index) == 40 and noisy.dtype == np.complex64
    np.testing.assert_array_equal(x, np.concatenate([noisy.real, noisy.imag], axis=-1))
    assert not np.allclose(x[..., :16], F.real)

    doc_path = tmp_path / "baseline.json"
    assert main(["baseline", "--data", str(data), "--noise", "20", "--noise-model", model, "--seed", "5",
                 "--split", "all", "--out", str(doc_path)]) == 0
    doc = json.loads(doc_path.read_text())
    assert doc["noise_model"] == model and doc["noise"] == 20 and f"noise 20 % ({model})" in capsys.readouterr().out
    # the baseline's numbers are those of the Born inversion of exactly this noisy far field
    grid = read_manifest(data).grid
    images = np.concatenate([b["image"].numpy() for b in src])[index]
    pred = CartesianBornInversion(grid).predict(noisy, doc["lambda"])
    per_sample = relative_l2(torch.from_numpy(pred), torch.from_numpy(images.astype(np.float64))).numpy()
    expected = per_sample.mean().item()
    assert doc["metrics"]["rel_l2"]["mean"] == pytest.approx(expected, rel=1e-9)
    # each sample's error, by its global index: the two methods' errors pair on the same 40 samples
    assert doc["samples"]["index"] == index.tolist() == metrics["samples"]["index"]
    np.testing.assert_allclose(doc["samples"]["rel_l2"], per_sample, rtol=1e-9)
    assert compare(metrics["samples"], doc["samples"], "rel_l2").n == 40
    clean = CartesianBornInversion(grid).predict(F, doc["lambda"])
    assert expected != pytest.approx(relative_l2(torch.from_numpy(clean), torch.from_numpy(
        images.astype(np.float64))).mean().item(), rel=1e-6)


def test_bad_noise_model_on_the_command_line(farfield_run, capsys):
    data, ckpt = farfield_run
    for cmd in (["evaluate", "--checkpoint", str(ckpt)], ["baseline"]):
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--data", str(data), "--noise", "1", "--noise-model", "gauss"])
        assert exc.value.code == 2 and "--noise-model: invalid choice: 'gauss'" in capsys.readouterr().err
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--data", str(data), "--noise", "-1"])
        assert exc.value.code == 2 and "--noise" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ training vs evaluation
def test_config_keys_resolve_and_belong_to_the_run():
    d = DataConfig(noise=2.0)
    assert d.evaluation_noise() == ("fan", 2.0)
    d = DataConfig(noise=2.0, noise_model="complex", eval_noise=0.0, eval_noise_model="additive")
    assert d.evaluation_noise() == ("additive", 0.0)
    assert d.noise_record() == {"train": {"model": "complex", "level": 2.0, "level_max": None, "per_epoch": False},
                                "eval": {"model": "additive", "level": 0.0}}
    with pytest.raises(ConfigError, match=r"data\.eval_noise: must lie in \[0, 1000\] or be null, got -1"):
        load_config(None, TrainConfig, ["data.eval_noise=-1"])
    with pytest.raises(ConfigError, match=r"data\.eval_noise_model: expected .*, got .gauss."):
        load_config(None, TrainConfig, ["data.eval_noise_model=gauss"])
    base = to_dict(load_config(None, TrainConfig, []))
    for key, value in (("eval_noise", 5.0), ("eval_noise_model", "complex"), ("noise_model", "additive")):
        now = to_dict(load_config(None, TrainConfig, [f"data.{key}={value}"]))
        refused, allowed = config_changes(base, now)
        assert len(refused) == 1 and refused[0].startswith(f"data.{key}: ") and not allowed
    old = {**base, "data": {k: v for k, v in base["data"].items() if k not in ("noise_model", "eval_noise",
                                                                             "eval_noise_model")}}
    assert config_changes(old, base) == ([], [])                  # a run written before the keys existed


def test_evaluation_noise_is_independent_of_the_training_noise(tmp_path):
    """Two one-process trainings that differ only in data.eval_noise: the same training (weights), other
    validation and test metrics; the test metrics are `bcrdist evaluate` of the best model at that noise."""
    data = make_dataset(tmp_path / "data", n=80, val=8)
    sched = {"batch_size": 8, "epochs": 1, "pretrain_stages": [[1, 1.0]], "finetune": False}
    results, weights = {}, {}
    for name, extra in (("same", {}), ("other", {"eval_noise": 40.0, "eval_noise_model": "additive"})):
        run = tmp_path / name
        cfg = write_config(tmp_path / f"{name}.yaml", data, run, schedule=sched,
                           data={"path": str(data), "n_valid": 8, "noise": 5.0, "noise_model": "complex", **extra})
        assert main(["train", "--config", str(cfg)]) == 0
        results[name] = json.loads((run / "results.json").read_text())
        weights[name] = final_weights(run)
    assert weights["same"].keys() == weights["other"].keys()
    assert all(torch.equal(weights["same"][k], weights["other"][k]) for k in weights["same"])
    for split in ("val", "test"):
        a, b = results["same"]["errors"][split]["weighted"], results["other"]["errors"][split]["weighted"]
        assert a["count"] == b["count"] and a["mean"] != pytest.approx(b["mean"], rel=1e-4)
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "other" / "checkpoints" / "best.pt"), "--data",
                 str(data), "--out", str(out), "--plots", "0", "--noise", "40", "--noise-model", "additive"]) == 0
    got = json.loads((out / "metrics.json").read_text())["metrics"]["weighted"]["mean"]
    assert got == pytest.approx(results["other"]["errors"]["test"]["weighted"]["mean"], rel=1e-5)
