"""Checkpoint files (`bcrdist.models.checkpoint`): atomic writes, weights-only loading, prefix-free model
state, and the model-checkpoint format (`save_model` / `load_model`, shared by the trainer's best.pt and
`bcrdist import-keras`)."""

from __future__ import annotations

import os
import pathlib
import stat
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from torch import nn

import bcrdist
from bcrdist.cli import main
from bcrdist.errors import DataError
from bcrdist.models import checkpoint as ckpt
from bcrdist.models.checkpoint import (MODEL_FORMAT, atomic_save, load_checkpoint, load_model, load_model_state,
                                      model_state, remove_stale_temporaries, save_model, strip_prefixes, unwrap)
from bcrdist.models.bcrnet import BCRNet
from bcrdist.models.registry import NetworkIO
from bcrdist.models.scattering import ScatteringModel
from bcrdist.train.config import TrainConfig

KERAS = Path(__file__).resolve().parent / "fixtures" / "keras"


class NotAllowed:
    """An arbitrary object: weights_only loading must refuse it."""

    def __init__(self):
        self.x = 1


class Boom:
    """Raises while being pickled (a save that fails half way)."""

    def __init__(self, exc=RuntimeError):
        self.exc = exc

    def __reduce_ex__(self, protocol):
        raise self.exc("serialization failed")


def _layout():
    return {"model": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.float64)},
            "step": 17, "lr": 3.5e-4, "name": "pretrain-2", "flag": True, "none": None,
            "list": [1, 2.5, "x", [3, 4]], "tuple": (1, 2),
            "nested": {"a": {"b": [torch.ones(2), {"c": float("inf")}]}}}


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


def test_atomic_save_and_weights_only_load(tmp_path):
    path = atomic_save(_layout(), tmp_path / "sub" / "best.pt")
    assert path == tmp_path / "sub" / "best.pt"
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]
    _assert_same(_layout(), load_checkpoint(path))


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_save_failure_keeps_old_file(tmp_path, exc):
    path = atomic_save({"v": 1, "t": torch.ones(3)}, tmp_path / "last.pt")
    with pytest.raises(exc):
        atomic_save({"v": 2, "big": torch.zeros(10_000), "bad": Boom(exc)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    _assert_same({"v": 1, "t": torch.ones(3)}, load_checkpoint(path))


def test_atomic_save_never_writes_target_directly(tmp_path, monkeypatch):
    """A save killed after writing part of the data (here: torch.save writes then raises) leaves the old file."""
    path = atomic_save({"v": 1}, tmp_path / "best.pt")
    before = path.read_bytes()
    real_save = torch.save

    def partial_save(obj, f, *a, **k):
        f.write(b"PARTIAL")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", partial_save)
    with pytest.raises(OSError):
        atomic_save({"v": 2}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
    monkeypatch.setattr(ckpt.torch, "save", real_save)

    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_save({"v": 3}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_atomic_save_respects_umask(tmp_path):
    """A checkpoint gets the permissions of a normally created file (0666 & ~umask), like torch.save(path)
    would give it: mkstemp's private 0600 must not leak into the result (shared run directories)."""
    umask = os.umask(0o022)
    try:
        path = atomic_save({"v": 1}, tmp_path / "best.pt")
        reference = tmp_path / "plain.pt"
        torch.save({"v": 1}, reference)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode) == 0o644


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "obj": NotAllowed()}, path)
    with pytest.raises(DataError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataError):
        load_checkpoint(garbage)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_strip_prefixes():
    t = torch.zeros(1)
    state = {"module.a.weight": t, "_orig_mod.b": 1, "module._orig_mod.c": 2, "_orig_mod.module.d": 3,
             "module.module.e": 4, "f.module.g": 5, "h": 6}
    out = strip_prefixes(state)
    assert list(out) == ["a.weight", "b", "c", "d", "e", "f.module.g", "h"]
    assert out["a.weight"] is t


class FakeDDP(nn.Module):
    """Wraps like DistributedDataParallel: the model is `.module`, state keys get 'module.'."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


class FakeCompiled(nn.Module):
    """Wraps like torch.compile's OptimizedModule: the model is `._orig_mod`, keys get '_orig_mod.'."""

    def __init__(self, module):
        super().__init__()
        self._orig_mod = module

    def forward(self, x):
        return self._orig_mod(x)


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_unwrap_and_model_state_with_fake_wrappers():
    m = _tiny()
    for wrapped in (m, FakeDDP(m), FakeCompiled(m), FakeDDP(FakeCompiled(m)), FakeCompiled(FakeDDP(m))):
        assert unwrap(wrapped) is m
        state = model_state(wrapped)
        assert list(state) == list(m.state_dict())
        for k, v in m.state_dict().items():
            assert torch.equal(state[k], v) and state[k].device.type == "cpu"
    state = model_state(FakeDDP(m))
    state["0.weight"].add_(1.0)                           # a copy, not the live parameter
    assert not torch.equal(state["0.weight"], m[0].weight)


def test_unwrap_real_torch_compile():
    m = _tiny()
    compiled = torch.compile(m, backend="eager")           # wrapping only: never called
    assert list(compiled.state_dict())[0].startswith("_orig_mod.")
    assert unwrap(compiled) is m
    assert unwrap(FakeDDP(compiled)) is m
    assert unwrap(torch.compile(FakeDDP(m), backend="eager")) is m
    assert list(model_state(torch.compile(FakeDDP(m), backend="eager"))) == list(m.state_dict())


def test_load_model_state_prefixed_into_wrapped():
    src, dst = _tiny(), nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    prefixed = FakeCompiled(FakeDDP(src)).state_dict()
    assert all(k.startswith("_orig_mod.module.") for k in prefixed)
    load_model_state(FakeDDP(dst), prefixed)
    for (k, v), (_, w) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(v, w), k
    with pytest.raises(DataError, match=r"lacks 1 of the model's 4 tensors \(2.bias, …\)"):     # strict
        load_model_state(dst, {k: v for k, v in list(src.state_dict().items())[:-1]})


def test_remove_stale_temporaries(tmp_path):
    keep = ["best.pt", "last.pt", "notes.tmp", "visible.pt.tmp"]
    stale = [".best.pt.abc123.tmp", ".last.pt.x.tmp"]
    for name in keep + stale:
        (tmp_path / name).write_bytes(b"x")
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    remove_stale_temporaries(tmp_path / "does-not-exist")            # no error


def test_remove_stale_temporaries_catches_real_leftover(tmp_path, monkeypatch):
    """The leftover of a save killed by SIGKILL (no cleanup) is recognised by remove_stale_temporaries."""
    monkeypatch.setattr(pathlib.Path, "unlink", lambda self, missing_ok=False: None)  # the except-clause never ran
    with pytest.raises(RuntimeError):
        atomic_save({"bad": Boom()}, tmp_path / "best.pt")
    monkeypatch.undo()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name != "best.pt"
    remove_stale_temporaries(tmp_path)
    assert list(tmp_path.iterdir()) == []


# =====================================================================================================
# The model-checkpoint format
# =====================================================================================================
def _scattering_model():
    torch.manual_seed(0)
    model = ScatteringModel(BCRNet(n_input=(16, 16), n_output=(16, 6), alpha=3, n_cnn=1, n_cnn3=2),
                            antipodal=True, use_imag=True)
    model.set_normalization(torch.linspace(-1, 1, 16), torch.linspace(0.5, 2, 16), 3.5)
    return model


def test_save_model_and_load_model_round_trip(tmp_path):
    model = _scattering_model()
    path = save_model(tmp_path / "m.pt", FakeDDP(model), config={"seed": 7}, source="test")
    ck = load_checkpoint(path)
    assert ck["format"] == MODEL_FORMAT and ck["version"] == bcrdist.__version__ and ck["source"] == "test"
    assert ck["model_config"] == model.record()
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ck["model"])
    loaded, meta = load_model(path, with_meta=True)
    assert meta == {"seed": 7, "config": {"seed": 7}, "provenance": None}
    assert not loaded.training and loaded.antipodal and loaded.use_imag
    for (k, v), (k2, w) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, w), k
    rng = np.random.default_rng(0)
    measure, imag = rng.standard_normal((2, 3, 16, 8)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_eta(measure, imag), model.predict_eta(measure, imag))


def test_load_model_refuses_a_file_without_model_config(tmp_path):
    path = atomic_save({"model": {}}, tmp_path / "x.pt")
    with pytest.raises(DataError, match="not a bcrdist model checkpoint"):
        load_model(path)


def test_import_keras_writes_the_model_checkpoint_format(tmp_path):
    """`bcrdist import-keras` builds the network from the config's model section (`BCRNet.resolve`)
    and writes it with `save_model`: the loaded checkpoint reproduces the Keras model's output."""
    with h5py.File(KERAS / "bcr_wcomp3_io.h5", "r") as f:
        a = {k: int(f.attrs[k]) for k in ("Ns", "Nd", "Nt", "Nr", "alpha", "n_cnn", "n_cnn3", "w_comp")}
        x, y = np.asarray(f["input"]), np.asarray(f["output"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {k: a[k] for k in ("alpha", "n_cnn", "n_cnn3", "w_comp")} | {"levels": 4},
                                   "data": {"antipodal": False}}))
    out = tmp_path / "model.pt"
    assert main(["import-keras", str(KERAS / "bcr_wcomp3_keras_weights.h5"), "--config", str(cfg), "--out", str(out),
                 "--input-shape", str(a["Ns"]), str(a["Nd"]), "--output-shape", str(a["Nt"]), str(a["Nr"]),
                 "--output-scale", "2.5"]) == 0
    ck = load_checkpoint(out)
    assert ck["format"] == MODEL_FORMAT and ck["source"].startswith("keras:")
    assert ck["config"]["model"]["alpha"] == a["alpha"]
    model = bcrdist.load_model(out)
    np.testing.assert_allclose(model.predict_eta(x), 2.5 * y, rtol=1e-5, atol=2.5e-5)


def test_import_keras_one_line_error_for_impossible_sizes(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"levels": 9}}))
    code = main(["import-keras", str(KERAS / "bcr_wcomp3_keras_weights.h5"), "--config", str(cfg), "--out",
                 str(tmp_path / "m.pt"), "--input-shape", "64", "32", "--output-shape", "64", "24"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "not divisible by 2^levels" in err
    assert not (tmp_path / "m.pt").exists()


def test_bcrnet_resolves_the_model_section_and_the_model_records_it():
    cfg = TrainConfig()
    cfg.model.alpha, cfg.model.n_cnn, cfg.model.n_cnn3, cfg.model.w_comp, cfg.model.levels = 3, 2, 2, 3, 2
    io = NetworkIO(n_input=(16, 8), n_output=(16, 6), parts="real", target_kind="polar", periodic=True)
    model = ScatteringModel(BCRNet(**BCRNet.resolve(cfg.model, io)), antipodal=False, use_imag=True)
    assert model.record() == {"net": {"n_input": [16, 8], "n_output": [16, 6], "alpha": 3, "n_cnn": 2,
                                      "n_cnn3": 2, "w_comp": 3, "levels": 2},
                              "antipodal": False, "use_imag": True, "input": "measure", "target": "coe",
                              "data_input": [16, 8], "data_output": [16, 6], "type": "bcrnet"}
