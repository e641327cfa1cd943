"""The training state registry (`bcrdist.train.state`): parts saved and loaded together, weights-only, the
optimizer's one home, every seeded generator, and the conversion of the 0.1 layout."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from bcrdist.errors import DataError
from bcrdist.models.checkpoint import MODEL_FORMAT, load_checkpoint
from bcrdist.train.best_model import BestModelTracker
from bcrdist.train.config import TrainConfig
from bcrdist.train.optim import make_optimizer
from bcrdist.train.state import (TRAINING_FORMAT, V1_FORMAT, BestWeights, Checkpointer, ModelWeights,
                                 OptimizerHolder, ProgressCounters, RandomState, upgrade_training_state)
from train_helpers import one_process



def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def train_steps(model, optimizer, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(5, 3, generator=g)
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


class Counter:
    """A stateful part the trainer does not know: registering it is all it takes to checkpoint it."""

    def __init__(self):
        self.n = 0

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]


def parts(model, cfg, lr=1e-3):
    return {"model": ModelWeights(model), "best_model": BestWeights(model),
            "optimizer": OptimizerHolder(cfg, model, lr), "progress": ProgressCounters(lr=lr),
            "tracker": BestModelTracker(patience=3), "rng": RandomState(), "counter": Counter()}


def test_checkpointer_round_trip_restores_every_part(tmp_path):
    cfg = TrainConfig()
    model = tiny_model(0)
    a = parts(model, cfg)
    a["optimizer"].set_lr(3e-4)
    train_steps(model, a["optimizer"].optimizer, 3, seed=1)
    a["best_model"].keep()
    train_steps(model, a["optimizer"].optimizer, 2, seed=2)
    a["progress"].load_state_dict({"stage": 2, "epoch": 5, "step": 40, "stage_started": True,
                                   "lr": 3e-4, "nan_failures": 1})
    a["tracker"].compare_with_best(4, 0.5, 0.6)
    a["counter"].n = 11
    path = tmp_path / "last.pt"
    Checkpointer(a, one_process()).save(path, world_size=1, note="meta")
    ck = load_checkpoint(path)                                  # weights_only=True
    assert ck["format"] == TRAINING_FORMAT and ck["note"] == "meta" and ck["counter"] == {"n": 11}
    assert set(ck) >= set(a)

    other = tiny_model(5)
    b = parts(other, cfg, lr=1.0)
    Checkpointer(b, one_process()).load(path)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    assert b["progress"] == a["progress"] and b["counter"].n == 11
    assert b["tracker"].state_dict() == a["tracker"].state_dict()
    assert b["optimizer"].optimizer.param_groups[0]["lr"] == 3e-4
    for k, v in a["best_model"].weights.items():
        assert torch.equal(b["best_model"].weights[k], v)
    # the two runs continue identically
    train_steps(model, a["optimizer"].optimizer, 3, seed=3)
    train_steps(other, b["optimizer"].optimizer, 3, seed=3)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    b["best_model"].restore()
    for k, v in a["best_model"].weights.items():
        assert torch.equal(other.state_dict()[k], v)


def test_checkpointer_names_a_missing_part(tmp_path):
    cfg = TrainConfig()
    model = tiny_model()
    registered = parts(model, cfg)
    path = tmp_path / "last.pt"
    Checkpointer({k: v for k, v in registered.items() if k != "counter"}, one_process()).save(path)
    with pytest.raises(DataError, match="no state for counter"):
        Checkpointer(registered, one_process()).load(path)


@pytest.mark.parametrize("name", ["nadam", "adamw"])
def test_optimizer_reset_equals_a_fresh_optimizer(name):
    cfg = TrainConfig()
    cfg.optim.name = name
    model, fresh_model = tiny_model(0), tiny_model(0)
    holder = OptimizerHolder(cfg, model, 1e-3)
    train_steps(model, holder.optimizer, 4, seed=1)
    fresh_model.load_state_dict(model.state_dict())
    holder.reset(2e-3)
    assert not holder.optimizer.state                           # no moments
    fresh = make_optimizer(cfg, fresh_model.parameters(), 2e-3)
    train_steps(model, holder.optimizer, 4, seed=2)
    train_steps(fresh_model, fresh, 4, seed=2)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh_model.state_dict()[k], v), k


def test_random_state_restores_every_generator(tmp_path):
    rng = RandomState()
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()                                  # a cached Gaussian in NumPy's state
    path = tmp_path / "rng.pt"
    torch.save(rng.state_dict(), path)
    expected = (torch.rand(3), np.random.standard_normal(4), [random.random() for _ in range(3)])
    torch.manual_seed(10)
    np.random.seed(20)
    random.seed(30)
    rng.load_state_dict(torch.load(path, weights_only=True))
    got = (torch.rand(3), np.random.standard_normal(4), [random.random() for _ in range(3)])
    assert torch.equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_random_state_of_the_old_format_restores_torch_only():
    torch.manual_seed(4)
    state = torch.get_rng_state()
    expected = torch.rand(2)
    torch.manual_seed(5)
    RandomState().load_state_dict({"torch": state})
    assert torch.equal(torch.rand(2), expected)


def test_progress_counters_refuse_unknown_layouts():
    with pytest.raises(DataError, match="progress state"):
        ProgressCounters().load_state_dict({"stage": 0, "epoch": 0})


def test_upgrade_refuses_unknown_formats_and_model_checkpoints(tmp_path):
    with pytest.raises(DataError, match="unknown checkpoint format"):
        upgrade_training_state({"format": "something-else"}, tmp_path / "x.pt")
    with pytest.raises(DataError, match="not a training state"):
        upgrade_training_state({"format": V1_FORMAT, "model": {}, "model_config": {}}, tmp_path / "best.pt")
    with pytest.raises(DataError, match="not a training state"):
        upgrade_training_state({"format": MODEL_FORMAT, "model": {}, "model_config": {}}, tmp_path / "best.pt")
    current = {"format": TRAINING_FORMAT, "model": {}}
    assert upgrade_training_state(current, tmp_path / "last.pt") is current


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_random_state_restores_the_cuda_generators(tmp_path):
    torch.cuda.init()
    torch.cuda.manual_seed_all(6)
    path = tmp_path / "rng.pt"
    torch.save(RandomState().state_dict(), path)
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(7)
    state = torch.load(path, weights_only=True)
    assert len(state["cuda"]) == torch.cuda.device_count()
    RandomState().load_state_dict(state)
    assert torch.equal(torch.rand(4, device="cuda"), expected)


def test_a_write_failure_is_one_line_naming_the_file_once():
    import errno

    from bcrdist.train.state import write_failure

    raw = OSError(errno.ENOSPC, "No space left on device")
    assert write_failure("/r/last.pt", raw) == "/r/last.pt: cannot write: No space left on device"
    named = OSError(errno.ENOSPC, "/r/last.pt: cannot write: No space\nleft on device")
    assert write_failure("/r/last.pt", named) == "/r/last.pt: cannot write: No space left on device"


def test_optimizer_state_of_an_older_bcrdist_keeps_the_multi_tensor_kernel():
    """A checkpoint written with per-parameter NAdam loops (foreach=False) brings back the moments, not the
    slower implementation flag."""
    from types import SimpleNamespace

    from bcrdist.train.state import OptimizerHolder

    cfg = SimpleNamespace(optim=SimpleNamespace(name="nadam", weight_decay=0.0))
    model = torch.nn.Linear(3, 2)
    old = torch.optim.NAdam(model.parameters(), lr=1e-3, foreach=False)
    model(torch.randn(4, 3)).sum().backward()
    old.step()
    holder = OptimizerHolder(cfg, model, 1e-3)
    assert holder.optimizer.param_groups[0]["foreach"] is True
    holder.load_state_dict(old.state_dict())
    assert holder.optimizer.param_groups[0]["foreach"] is True
    for p in model.parameters():
        assert torch.equal(holder.optimizer.state[p]["exp_avg"], old.state[p]["exp_avg"])
