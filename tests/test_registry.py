"""The network registry and the run plan: a network defined in this file, registered with
`bcrdist.models.register`, trains, resumes, evaluates and loads end to end with no edit inside bcrdist/; the
registry is the only dispatch on `model.type`; the plan is made once per run; bad choices are one line
before the run directory is claimed."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import bcrdist
from bcrdist.cli import main
from bcrdist.config import load_config, setting
from bcrdist.data.format import read_manifest
from bcrdist.errors import ConfigError
from bcrdist.models import Network, network_names, register
from bcrdist.models.registry import network_class
from bcrdist.train import plan as plan_module
from bcrdist.train import trainer as trainer_module
from bcrdist.train.config import TrainConfig
from bcrdist.train.evaluation import evaluate_checkpoint
from train_helpers import assert_same_weights, final_weights, make_dataset, write_config

PACKAGE = Path(__file__).resolve().parents[1] / "bcrdist"


@dataclasses.dataclass
class ToyConfig:
    hidden: int = setting(8, help="hidden width of the toy network", low=1)


class ToyNetwork(Network):
    """A per-angle MLP: (B, Ns, Nd) → (B, Ns, Nr), one hidden layer."""

    summary = "a toy per-angle MLP defined in tests/test_registry.py"
    config_class = ToyConfig
    input_parts = "real"
    targets = ("polar",)

    def __init__(self, n_input, n_output, hidden: int = 8):
        super().__init__()
        self.n_input, self.n_output, self.hidden = tuple(n_input), tuple(n_output), int(hidden)
        self.layers = nn.Sequential(nn.Linear(self.n_input[1], self.hidden), nn.Tanh(),
                                    nn.Linear(self.hidden, self.n_output[1]))

    def forward(self, x, return_aux=False):
        out = self.layers(x)
        return (out, out) if return_aux else out

    def config(self) -> dict:
        return {"n_input": list(self.n_input), "n_output": list(self.n_output), "hidden": self.hidden}


if "toy_mlp" not in network_names():
    register("toy_mlp", ToyNetwork)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("registry") / "ds")


def toy_config(tmp_path, data, name, **schedule):
    return write_config(tmp_path / f"{name}.yaml", data, tmp_path / name,
                        model={"type": "toy_mlp", "options": {"hidden": 6}},
                        schedule={"batch_size": 8, "epochs": 1, "pretrain_stages": [[1, 1.0]],
                                  "finetune_stages": [[2, 1.0]], **schedule},
                        checkpoint={"every_steps": 3}, results_table=None)


def test_a_network_registered_outside_bcrdist_trains_resumes_evaluates_and_loads(data, tmp_path, monkeypatch):
    """No edit inside bcrdist/: the toy network of this file, through `bcrdist train` (in this process, where
    it is registered), a resume from a run stopped at max_steps, `evaluate` and `bcrdist.load_model`. The run
    plan is made once per run (the calls are counted)."""
    calls = []
    real = trainer_module.make_training_plan

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "make_training_plan", counted)
    resolved = []
    real_resolve = plan_module.resolve_data
    monkeypatch.setattr(plan_module, "resolve_data", lambda *a: resolved.append(a) or real_resolve(*a))
    full = toy_config(tmp_path, data, "full")
    assert main(["train", "--config", str(full)]) == 0
    assert len(calls) == 1 and len(resolved) == 1
    results = json.loads((tmp_path / "full" / "results.json").read_text())
    assert results["model"]["type"] == "toy_mlp" and results["parameters"] == (8 * 6 + 6) + (6 * 6 + 6)
    # a run stopped after its first epoch and resumed: the same weights as the uninterrupted run
    part = toy_config(tmp_path, data, "part")
    steps = results["n_train"] // 8
    assert main(["train", "--config", str(part), "--set", f"schedule.max_steps={steps}"]) == 0
    assert main(["train", "--config", str(part), "--resume", "auto"]) == 0
    assert len(calls) == 3
    assert "resumed from" in (tmp_path / "part" / "train.log").read_text()
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "part"), atol=0)
    best = tmp_path / "full" / "checkpoints" / "best.pt"
    metrics = evaluate_checkpoint(best, data, "test", tmp_path / "eval", n_plots=0, device="cpu")
    assert metrics["weighted"]["mean"] == pytest.approx(results["errors"]["test"]["weighted"]["mean"], rel=1e-6)
    model = bcrdist.load_model(best)
    assert isinstance(model.net, ToyNetwork) and model.net.hidden == 6
    measure = np.random.default_rng(0).standard_normal((3, 16, 8)).astype(np.float32)
    assert model.predict_eta(measure).shape == (3, 16, 6)


def test_register_refuses_a_name_in_use_and_a_class_that_declares_too_little():
    with pytest.raises(ConfigError, match="model.type 'cnn' is taken by bcrdist.models.study_cnn.CNN") as err:
        register("cnn", ToyNetwork)
    assert "\n" not in str(err.value)

    class Undeclared(Network):
        pass

    with pytest.raises(ConfigError, match="must declare a one-line `summary`"):
        register("undeclared", Undeclared)
    with pytest.raises(ConfigError, match="expected a subclass of bcrdist.models.Network"):
        register("plain", nn.Linear)
    with pytest.raises(ConfigError, match="expected lower-case letters"):
        register("Toy Net", ToyNetwork)
    assert "undeclared" not in network_names() and network_class("cnn").__name__ == "CNN"


def test_an_unknown_model_type_is_one_line_with_a_suggestion_before_anything_is_written(data, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", model={"type": "cnm"})
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model.type: unknown network 'cnm' (did you mean 'cnn'?" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model, data_keys, message", [
    ({"type": "cnn"}, {}, "model.type: cnn reconstructs from the complex far field"),
    ({"type": "toy_mlp", "options": {"hidden": 0}}, {}, "model.options.hidden: must be an integer ≥ 1"),
    ({"type": "toy_mlp", "options": {"width": 3}}, {}, "unknown key 'model.options.width'"),
    ({"type": "bcrnet", "options": {"hidden": 3}}, {}, "model.options: applies to networks registered outside"),
    ({"type": "toy_mlp", "pad_to": [32, 16]}, {}, "model.pad_to: applies to BCR-Net only"),
])
def test_choices_a_network_cannot_take_are_one_line_before_the_run_directory_is_claimed(data, tmp_path, capsys,
                                                                                        model, data_keys, message):
    cfg = write_config(tmp_path / "c.yaml", data, tmp_path / "run", model=model, data=data_keys)
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err
    assert not (tmp_path / "run").exists()


def test_the_plan_refuses_a_target_kind_the_network_cannot_predict(data):
    cfg = load_config(None, TrainConfig, [f"data.path={data}", "model.type=toy_mlp"])
    manifest = read_manifest(data)
    plan = plan_module.make_plan(cfg, manifest, 2)
    assert plan.model.config == {"hidden": 8, "n_input": [16, 8], "n_output": [16, 6]}
    assert plan.schedule.stages[0].global_batch == 32
    cartesian = dataclasses.replace(plan.data, layout=dataclasses.replace(plan.data.layout, target_kind="cartesian"))
    with pytest.raises(ConfigError, match=r"data.target: toy_mlp predicts polar images; the target 'coe' .* is "
                                          r"cartesian"):
        plan_module.model_plan(cfg, cartesian, manifest)
    with pytest.raises(ConfigError, match="not divisible by the world size 3"):
        plan_module.make_plan(cfg, manifest, 3)


def comparisons_with_network_names(path: Path, names: set[str]) -> list[str]:
    """`x == "bcnn"`, `"cnn" in (...)`, `x != 'nio'`, … : a comparison with a registered network's name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in operands:
                items = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                for item in items:
                    if isinstance(item, ast.Constant) and item.value in names:
                        found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Dict):
            for key in node.keys:
                if isinstance(key, ast.Constant) and key.value in names and isinstance(node, ast.Dict) \
                        and len(node.keys) > 1 and all(isinstance(k, ast.Constant) and k.value in names
                                                       for k in node.keys):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: a table keyed by network names")
                    break
    return found


def test_the_registry_is_the_only_dispatch_on_the_network_type():
    names = set(network_names()) - {"toy_mlp"}
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in comparisons_with_network_names(path, names)]
    assert not found, "dispatch on model.type outside the registry:\n" + "\n".join(found)


def test_the_checker_sees_a_comparison(tmp_path):
    bad = PACKAGE / "_probe_not_a_module.py"
    try:
        bad.write_text('def f(t):\n    return t == "bcnn" or t in ("cnn", "nio")\n')
        assert len(comparisons_with_network_names(bad, {"bcnn", "cnn"})) == 2
    finally:
        bad.unlink()


def test_every_builtin_section_is_a_model_config_field_of_the_networks_config_class():
    fields = {f.name: f for f in dataclasses.fields(TrainConfig().model)}
    for name in network_names():
        cls = network_class(name)
        if cls.__module__.startswith("bcrdist.") and cls.config_section:
            assert cls.config_section in fields, name
            assert isinstance(getattr(TrainConfig().model, cls.config_section), cls.config_class), name


def test_config_networks_lists_every_registered_network(capsys):
    assert main(["config", "networks"]) == 0
    out = capsys.readouterr().out
    for name in network_names():
        assert name in out and network_class(name).summary in out
    assert yaml.safe_load(yaml.safe_dump({"ok": True}))
    assert torch.is_tensor(torch.zeros(1))
