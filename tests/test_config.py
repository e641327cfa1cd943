"""Typed YAML configuration (bcrdist.config) and the training config dataclasses (bcrdist.train.config)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import subprocess
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from bcrdist.config import Range, apply_overrides, check_ranges, from_dict, load_config, read_yaml, to_dict
from bcrdist.errors import ConfigError
from bcrdist.physics.generation_config import GenerationConfig
from bcrdist.train.config import CheckpointConfig, DataConfig, ModelConfig, ScheduleConfig, TrainConfig


# A small schema exercising every annotation kind the loader supports.
@dataclass
class Inner:
    name: str = "x"
    count: int = 1
    scale: float = 1.0
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    limit: float | None = None
    depth: int | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    pair: tuple[float, float] = (1.0, 1.0)
    sizes: tuple[int, ...] = (1,)
    items: list[int] = field(default_factory=list)
    stages: list[tuple[int, float]] | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Required:
    must: int
    other: int = 0


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        fn(*args, **kwargs)
    return str(err.value)


# --------------------------------------------------------------------------------------- happy paths
def test_defaults_without_file():
    cfg = load_config(None, TrainConfig)
    assert cfg == TrainConfig()
    assert load_config(None, Outer) == Outer()


def test_load_full_file(tmp_path):
    path = write(tmp_path, """
inner:
  name: hello
  count: 3
  scale: 2          # int → float
  flag: true
  mode: b
  limit: null
  depth: 4
pair: [1, 2.5]
sizes: [4, 5, 6]
items: [7, 8]
stages: [[1, 1], [2, 0.5]]
extra: {k: v}
""")
    cfg = load_config(path, Outer)
    assert cfg.inner == Inner("hello", 3, 2.0, True, "b", None, 4)
    assert isinstance(cfg.inner.scale, float)
    assert cfg.pair == (1.0, 2.5) and isinstance(cfg.pair, tuple) and isinstance(cfg.pair[0], float)
    assert cfg.sizes == (4, 5, 6) and isinstance(cfg.sizes, tuple)
    assert cfg.items == [7, 8] and isinstance(cfg.items, list)
    assert cfg.stages == [(1, 1.0), (2, 0.5)] and all(isinstance(s, tuple) for s in cfg.stages)
    assert isinstance(cfg.stages[0][1], float)
    assert cfg.extra == {"k": "v"}


def test_train_config_file_round_trip(tmp_path):
    path = write(tmp_path, """
run_dir: runs/x
seed: 3
data: {path: data/fan, noise: 5, percent: 0.8}
model: {alpha: 80, levels: null}
optim: {name: adamw, lr: 0.002, grad_clip: 1}
schedule:
  batch_size: 16
  pretrain_stages: [[1, 1.0], [2, 0.5]]
  loss_weights: [0.5, 0.5]
  metric: psnr
runtime: {device: cpu, precision: bf16-mixed}
results_table: null
""")
    cfg = load_config(path, TrainConfig)
    assert cfg.data.noise == 5.0 and cfg.data.percent == 0.8 and cfg.model.alpha == 80
    assert cfg.optim.name == "adamw" and cfg.optim.grad_clip == 1.0
    assert cfg.schedule.pretrain_stages == [(1, 1.0), (2, 0.5)] and cfg.schedule.loss_weights == (0.5, 0.5)
    assert cfg.schedule.metric == "psnr" and cfg.runtime.precision == "bf16-mixed"
    assert cfg.results_table is None
    # to_dict → YAML mapping → the same config
    assert from_dict(TrainConfig, to_dict(cfg), "x") == cfg


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, ""), TrainConfig) == TrainConfig()
    assert load_config(write(tmp_path, "# only a comment\n", "c.yaml"), TrainConfig) == TrainConfig()


# ------------------------------------------------------------------------------------------ unknown keys
def test_unknown_top_level_key_names_file_and_key(tmp_path):
    path = write(tmp_path, "seed: 1\nepochs: 5\n")
    msg = config_error(load_config, path, TrainConfig)
    assert str(path) in msg and "'epochs'" in msg
    assert "schedule" in msg                               # lists the known keys


def test_unknown_nested_key_names_file_and_dotted_key(tmp_path):
    path = write(tmp_path, "schedule:\n  patiense: 3\n")
    msg = config_error(load_config, path, TrainConfig)
    assert str(path) in msg
    assert re.search(r"schedule\W.*patiense", msg), msg
    assert "patience" in msg                               # the known keys help spot the typo
    msg = config_error(load_config, write(tmp_path, "inner: {nmae: 1}\n", "o.yaml"), Outer)
    assert re.search(r"inner\W.*nmae", msg), msg


# -------------------------------------------------------------------------------------------- types
@pytest.mark.parametrize("yaml_text, key, expect", [
    ("inner: {name: 3}", "inner.name", "string"),              # int for str
    ("inner: {count: three}", "inner.count", "integer"),       # str for int
    ("inner: {count: true}", "inner.count", "integer"),        # bool is not an int
    ("inner: {count: 2.5}", "inner.count", "integer"),
    ("inner: {flag: 1}", "inner.flag", "true or false"),       # int is not a bool
    ("inner: {flag: 'yes please'}", "inner.flag", "true or false"),
    ("inner: {scale: false}", "inner.scale", "number"),        # bool is not a float
    ("inner: {scale: abc}", "inner.scale", "number"),
    ("inner: {mode: c}", "inner.mode", "'a', 'b'"),            # Literal choices listed
    ("inner: {limit: abc}", "inner.limit", "float or null"),   # Optional[float]
    ("inner: {depth: true}", "inner.depth", "int"),
    ("inner: 5", "inner", "mapping"),
    ("pair: [1, 2, 3]", "pair", "2 items"),
    ("pair: 1", "pair", "list"),
    ("pair: [1, x]", "pair[1]", "number"),
    ("sizes: [1, 2.5]", "sizes[1]", "integer"),
    ("items: 'abc'", "items", "list"),
    ("stages: [[1.5, 1]]", "stages", "expected"),
    ("extra: [1]", "extra", "dict"),
])
def test_wrong_types_name_file_and_key(tmp_path, yaml_text, key, expect):
    path = write(tmp_path, yaml_text + "\n")
    msg = config_error(load_config, path, Outer)
    assert str(path) in msg and key in msg and expect in msg, msg


def test_train_config_wrong_types(tmp_path):
    for text, key in [("seed: '3'", "seed"), ("model: {alpha: 40.0}", "model.alpha"),
                      ("data: {antipodal: 0}", "data.antipodal"), ("optim: {name: sgd}", "optim.name"),
                      ("schedule: {metric: mse}", "schedule.metric"), ("run_dir: 7", "run_dir"),
                      ("schedule: {loss_weights: [1]}", "schedule.loss_weights")]:
        msg = config_error(load_config, write(tmp_path, text + "\n"), TrainConfig)
        assert key in msg, (text, msg)


def test_missing_required_key():
    msg = config_error(from_dict, Required, {"other": 1}, "req.yaml")
    assert "req.yaml" in msg and "must" in msg
    assert from_dict(Required, {"must": 2}).must == 2


# -------------------------------------------------------------------------------------------- YAML file
def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = config_error(load_config, path, TrainConfig)
    assert str(path) in msg and "not found" in msg
    assert str(path) in config_error(read_yaml, path)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "seed: 1\nrun_dir: x\nschedule:\n  epochs: [1, 2\n  patience: 3\nmodel: {alpha: 4\n")
    msg = config_error(load_config, path, TrainConfig)
    assert str(path) in msg
    m = re.search(r"line (\d+)", msg)
    assert m and 4 <= int(m.group(1)) <= 6, msg
    bad_indent = write(tmp_path, "a: 1\n b: 2\n", "indent.yaml")
    msg = config_error(read_yaml, bad_indent)
    assert str(bad_indent) in msg and re.search(r"line 2\b", msg), msg


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_top_level(tmp_path, text):
    path = write(tmp_path, text)
    msg = config_error(load_config, path, TrainConfig)
    assert str(path) in msg and "mapping" in msg


# --------------------------------------------------------------------------------------------- overrides
def test_overrides_parsed_as_yaml(tmp_path):
    path = write(tmp_path, "schedule: {epochs: 40}\noptim: {grad_clip: 1.0}\n")
    cfg = load_config(path, TrainConfig, ["schedule.epochs=3", "schedule.loss_weights=[0.5, 0.25]",
                                          "optim.grad_clip=null", "optim.lr=0.01", "data.antipodal=false",
                                          "run_dir=runs/a=b", "model.levels=3",
                                          "schedule.pretrain_stages=[[1, 1], [4, 0.1]]"])
    assert cfg.schedule.epochs == 3 and isinstance(cfg.schedule.epochs, int)
    assert cfg.schedule.loss_weights == (0.5, 0.25)
    assert cfg.optim.grad_clip is None and cfg.optim.lr == 0.01
    assert cfg.data.antipodal is False
    assert cfg.run_dir == "runs/a=b"                          # split at the first '='
    assert cfg.model.levels == 3
    assert cfg.schedule.pretrain_stages == [(1, 1.0), (4, 0.1)]


def test_apply_overrides_nested_creation_and_order():
    data = {"a": {"x": 1}}
    apply_overrides(data, ["a.b=3", "c.d.e=[1, null]", "a.b=4", "f="], "w")
    assert data == {"a": {"x": 1, "b": 4}, "c": {"d": {"e": [1, None]}}, "f": None}
    assert apply_overrides({"k": 1}, None, "w") == {"k": 1}


def test_override_errors_name_the_override():
    msg = config_error(apply_overrides, {}, ["schedule.epochs"], "cli")
    assert "schedule.epochs" in msg and "key=value" in msg
    msg = config_error(apply_overrides, {"seed": 0}, ["seed.x=1"], "cli")
    assert "seed.x=1" in msg and "'seed'" in msg
    msg = config_error(apply_overrides, {}, ["a=[1, 2"], "cli")
    assert "a=[1, 2" in msg and "YAML" in msg


def test_override_errors_after_load_name_the_key():
    msg = config_error(load_config, None, TrainConfig, ["schedule.epochs=many"])
    assert "schedule.epochs" in msg and "integer" in msg
    msg = config_error(load_config, None, TrainConfig, ["schedule.bogus=1"])
    assert "bogus" in msg


@pytest.mark.parametrize("raw, value", [("1e-4", 1e-4), ("1e-05", 1e-5), ("3E-4", 3e-4), ("2.5e-3", 2.5e-3)])
def test_override_scientific_notation_is_a_number(raw, value):
    """`--set optim.lr=1e-4` is how learning rates are written; PyYAML (YAML 1.1) reads '1e-4' as a string."""
    cfg = load_config(None, TrainConfig, [f"optim.lr={raw}"])
    assert cfg.optim.lr == pytest.approx(value)


def test_yaml_file_scientific_notation_is_a_number(tmp_path):
    cfg = load_config(write(tmp_path, "optim:\n  lr: 1e-3\n"), TrainConfig)
    assert cfg.optim.lr == pytest.approx(1e-3)


def test_original_lr_flag_small_value_loads():
    """The original script's `--lr 1e-5` goes through `optim.lr={float}` (str(1e-05) == '1e-05')."""
    from bcrdist.cli.train import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    for lr in ("1e-3", "1e-5"):
        assert config_from_args(parser.parse_args(["--lr", lr])).optim.lr == pytest.approx(float(lr))


@pytest.mark.parametrize("override, key, value", [
    ("runtime.compile=false", "compile", "false"),
    ("runtime.compile=true", "compile", "true"),
    ("runtime.precision=32", "precision", "32"),
])
def test_string_choices_accept_plain_yaml_scalars(override, key, value):
    """Choices spelled like YAML booleans/numbers ('true', '32') must accept what YAML makes of them."""
    cfg = load_config(None, TrainConfig, [override])
    assert getattr(cfg.runtime, key) == value


# ---------------------------------------------------------------------------------------- validate()
@pytest.mark.parametrize("override, key", [
    ("schedule.test_weight=2", "schedule.test_weight"),
    ("schedule.test_weight=-0.5", "schedule.test_weight"),
    ("model.w_comp=2", "model.w_comp"),
    ("model.alpha=0", "model.alpha"),
    ("data.noise=-1", "data.noise"),
    ("data.n_valid=0", "data.n_valid"),
    ("data.num_workers=-2", "data.num_workers"),
    ("optim.lr=0", "optim.lr"),
    ("optim.grad_clip=-1", "optim.grad_clip"),
    ("schedule.patience=0", "schedule.patience"),
    ("schedule.epochs=0", "schedule.epochs"),
])
def test_validate_errors_name_the_key(tmp_path, override, key):
    # the bad value in the file: the file and the key are named
    path = write(tmp_path, yaml.safe_dump(apply_overrides({"seed": 1}, [override], "test")))
    msg = config_error(load_config, path, TrainConfig)
    assert key in msg and str(path) in msg, msg
    # the same value from --set: the override and the key, not the (valid) file (issue 21)
    path = write(tmp_path, "seed: 1\n", name="valid.yaml")
    msg = config_error(load_config, path, TrainConfig, [override])
    assert msg.startswith(f"--set {override}: {key}: ") and str(path) not in msg, msg


def test_nothing_to_train_is_an_error():
    msg = config_error(load_config, None, TrainConfig, ["schedule.pretrain=false", "schedule.finetune=false"])
    assert "schedule" in msg
    cfg = load_config(None, TrainConfig, ["schedule.pretrain=false", "schedule.finetune=false",
                                          "schedule.initial_weights=w.pt"])
    assert cfg.schedule.initial_weights == "w.pt"


def test_validate_directly():
    with pytest.raises(ConfigError, match="data.noise"):
        DataConfig(noise=-1).validate()
    with pytest.raises(ConfigError, match="model.w_comp"):
        ModelConfig(w_comp=4).validate()
    with pytest.raises(ConfigError, match="schedule.test_weight"):
        ScheduleConfig(test_weight=1.5).validate()
    DataConfig(noise=0).validate()
    ModelConfig(w_comp=3).validate()
    ScheduleConfig(test_weight=0).validate()


# ------------------------------------------------------------------------------------ did you mean
@pytest.mark.parametrize("text, unknown, meant", [
    ("epochs: 5\n", "'epochs'", "'schedule.epochs'"),                  # misplaced: a key of a section
    ("schedule:\n  patiense: 3\n", "'schedule.patiense'", "'schedule.patience'"),   # misspelt
    ("schedul:\n  epochs: 3\n", "'schedul'", "'schedule.epochs'"),     # misspelt section
    ("model: {alfa: 8}\n", "'model.alfa'", "'model.alpha'"),
    ("lr: 0.1\n", "'lr'", "'optim.lr'"),
])
def test_unknown_key_suggests_the_closest_known_key(tmp_path, text, unknown, meant):
    msg = config_error(load_config, write(tmp_path, text), TrainConfig)
    assert f"unknown key {unknown}" in msg and f"did you mean {meant}?" in msg, msg


def test_unknown_override_suggests_the_closest_known_key():
    msg = config_error(load_config, None, TrainConfig, ["schedule.epoch=3"])
    assert "unknown key 'schedule.epoch'" in msg and "did you mean 'schedule.epochs'?" in msg, msg
    msg = config_error(load_config, None, TrainConfig, ["epochs=3"])
    assert "did you mean 'schedule.epochs'?" in msg, msg


def test_unknown_key_without_a_close_one_gets_no_suggestion():
    msg = config_error(load_config, None, TrainConfig, ["zzzzqqqq=1"])
    assert "unknown key 'zzzzqqqq'" in msg and "did you mean" not in msg and "known keys" in msg, msg


def test_an_unknown_override_key_names_the_override_not_the_file(tmp_path, capsys):
    # issue 21: a --set typo was blamed on the (valid) config file
    from bcrdist.cli import main

    path = write(tmp_path, "seed: 1\n")
    msg = config_error(load_config, path, TrainConfig, ["schedul.epochs=3"])
    assert msg.startswith("--set schedul.epochs=3: unknown key 'schedul' (did you mean 'schedule.epochs'?"), msg
    assert str(path) not in msg
    assert load_config(path, TrainConfig, ["model.options.width=3"]).model.options == {"width": 3}
    assert main(["train", "--config", str(path), "--set", "schedule.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bcrdist train: error: --set schedule.epoch=3: unknown key"), err


@pytest.mark.parametrize("override, message", [
    ("schedule.epochs=-1", "schedule.epochs: must be an integer ≥ 1, got -1"),
    ("schedule.epochs=three", "schedule.epochs: expected an integer, got 'three'"),
    ("schedule.pretrain_stages=[[1, -1]]", "schedule.pretrain_stages[0]: lr multiplier must be a finite number > 0"),
    ("schedule={epochs: -2}", "schedule.epochs: must be an integer ≥ 1, got -2"),      # a section given whole
])
def test_a_bad_override_value_names_the_override_not_the_file(tmp_path, capsys, override, message):
    # issue 21: `--set schedule.epochs=-1` was blamed on the (valid) config file
    from bcrdist.cli import main

    path = write(tmp_path, "seed: 1\nschedule: {patience: 3}\n")
    msg = config_error(load_config, path, TrainConfig, ["seed=2", override, "optim.lr=0.01"])
    assert msg.startswith(f"--set {override}: {message}") and str(path) not in msg, msg
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/demo.yaml", "--set", f"run_dir={run}", "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"bcrdist train: error: --set {override}: {message}"), err
    assert "demo.yaml" not in err and not run.exists()
    # a later override of the same key wins, and is the one named; a bad value in the file is still the file's
    msg = config_error(load_config, path, TrainConfig, ["schedule.epochs=3", "schedule.epochs=0"])
    assert msg.startswith("--set schedule.epochs=0: schedule.epochs: "), msg
    bad = write(tmp_path, "schedule: {epochs: -1}\n", name="bad.yaml")
    msg = config_error(load_config, bad, TrainConfig, ["schedule.patience=3"])
    assert msg.startswith(f"{bad}: schedule.epochs: must be an integer ≥ 1, got -1"), msg


# ------------------------------------------------------------------------------ bcrdist train --print
def test_train_print_shows_the_resolved_value_and_does_not_train(tmp_path, capsys):
    from bcrdist.cli import main

    path = write(tmp_path, f"run_dir: {tmp_path / 'run'}\nschedule: {{epochs: 7}}\n")
    assert main(["train", "--config", str(path), "--set", "schedule.patience=4", "--epoch", "9",
                 "--print", "schedule.patience"]) == 0
    assert capsys.readouterr().out.strip() == "4"
    assert main(["train", "--config", str(path), "--epoch", "9", "--print", "schedule.epochs"]) == 0
    assert capsys.readouterr().out.strip() == "9"            # the original flag overrides the file
    assert main(["train", "--config", str(path), "--print", "all"]) == 0
    everything = read_yaml(write(tmp_path, capsys.readouterr().out, "printed.yaml"))
    assert from_dict(TrainConfig, everything) == load_config(path, TrainConfig)
    assert main(["train", "--config", str(path), "--print", "model"]) == 0
    assert read_yaml(write(tmp_path, capsys.readouterr().out, "model.yaml")) == to_dict(ModelConfig())
    assert main(["train", "--config", str(path), "--print", "schedule.bogus"]) == 2
    assert "schedule.bogus" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------- ranges (issue 12)
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" if (ROOT / "configs").is_dir() else ROOT / "bcrdist" / "configs"


@pytest.mark.parametrize("override, key, expect", [
    ("optim.lr=.inf", "optim.lr", "must be a finite number > 0, got inf"),
    ("optim.lr=.nan", "optim.lr", "must be a finite number > 0, got nan"),
    ("optim.lr=-1e-3", "optim.lr", "> 0"),
    ("checkpoint.every_steps=0", "checkpoint.every_steps", "must be an integer ≥ 1, got 0"),
    ("checkpoint.every_steps=-5", "checkpoint.every_steps", "≥ 1"),
    ("runtime.threads=0", "runtime.threads", "must be an integer ≥ 1 or null, got 0"),
    ("schedule.max_steps=0", "schedule.max_steps", "≥ 1 or null"),
    ("schedule.max_steps=-1", "schedule.max_steps", "≥ 1 or null"),
    ("schedule.rel_threshold=-0.1", "schedule.rel_threshold", "must be a finite number ≥ 0"),
    ("schedule.rel_threshold=.inf", "schedule.rel_threshold", "finite"),
    ("schedule.max_nan_failures=-1", "schedule.max_nan_failures", "must be an integer ≥ 0"),
    ("schedule.pretrain_stages=[]", "schedule.pretrain_stages", "empty"),
    ("schedule.finetune_stages=[]", "schedule.finetune_stages", "empty"),
    ("seed=-1", "seed", "must lie in [0, 4294967295], got -1"),
    ("seed=4294967296", "seed", "[0, 4294967295]"),               # np.random.seed's limit
    ("schedule.pretrain_stages=[[1, 1], [2, 0.5], [4, -0.5]]", "schedule.pretrain_stages[2]",
     "lr multiplier must be a finite number > 0, got -0.5"),
    ("schedule.pretrain_stages=[[1, 1], [0, 0.5]]", "schedule.pretrain_stages[1]",
     "batch multiplier must be an integer ≥ 1, got 0"),
    ("schedule.finetune_stages=[[4, 0]]", "schedule.finetune_stages[0]", "lr multiplier"),
    ("schedule.finetune_stages=[[4, .nan]]", "schedule.finetune_stages[0]", "finite"),
    ("data.n_valid=0", "data.n_valid", "≥ 1"),
    ("data.noise=.nan", "data.noise", "must lie in [0, 1000]"),
    ("data.noise=.inf", "data.noise", "must lie in [0, 1000]"),
    ("data.noise=1e30", "data.noise", "must lie in [0, 1000]"),
    ("data.noise_max=1e300", "data.noise_max", "must lie in [0, 1000] or be null"),
    ("data.eval_noise=1001", "data.eval_noise", "must lie in [0, 1000] or be null"),
    ("data.percent=0", "data.percent", "(0, 1) or be null"),
    ("data.percent=1", "data.percent", "(0, 1)"),
    ("data.percent=.nan", "data.percent", "(0, 1)"),
    ("data.num_workers=-1", "data.num_workers", "≥ 0"),
    ("model.n_cnn=0", "model.n_cnn", "≥ 1"),
    ("model.n_cnn3=0", "model.n_cnn3", "≥ 1"),
    ("model.w_comp=0", "model.w_comp", "≥ 1"),
    ("model.levels=0", "model.levels", "≥ 1 or null"),
    ("optim.weight_decay=-0.01", "optim.weight_decay", "≥ 0"),
    ("optim.weight_decay=.inf", "optim.weight_decay", "finite"),
    ("optim.grad_clip=0", "optim.grad_clip", "> 0 or null"),
    ("optim.grad_clip=.inf", "optim.grad_clip", "finite"),
    ("schedule.batch_size=0", "schedule.batch_size", "≥ 1"),
    ("schedule.patience=-3", "schedule.patience", "≥ 1"),
    ("schedule.patience_lr=0", "schedule.patience_lr", "≥ 1 or null"),
    ("schedule.test_weight=.nan", "schedule.test_weight", "[0, 1]"),
    ("schedule.reduce_lr_factor=1", "schedule.reduce_lr_factor", "(0, 1)"),
    ("schedule.reduce_lr_factor=0", "schedule.reduce_lr_factor", "(0, 1)"),
    ("schedule.nan_lr_factor=1.5", "schedule.nan_lr_factor", "(0, 1)"),
    ("schedule.nan_lr_factor=0", "schedule.nan_lr_factor", "(0, 1)"),
    ("schedule.initial_batch_size=0", "schedule.initial_batch_size", "≥ 1"),
    ("schedule.loss_weights=[-1, 1]", "schedule.loss_weights[0]", "≥ 0"),
    ("schedule.loss_weights=[1, .nan]", "schedule.loss_weights[1]", "finite"),
    ("schedule.loss_weights=[0, 0]", "schedule.loss_weights", "not both be 0"),
    ("runtime.log_every_steps=-1", "runtime.log_every_steps", "≥ 0"),
])
def test_out_of_range_values_name_the_key_and_the_range(tmp_path, override, key, expect):
    path = write(tmp_path, "seed: 1\n")
    msg = config_error(load_config, path, TrainConfig, [override])
    assert msg.startswith(f"--set {override}: {key}: ") and expect in msg and "\n" not in msg, msg   # issue 21
    assert str(path) not in msg, msg
    key_path = write(tmp_path, yaml.safe_dump(apply_overrides({}, [override], "x")), "in_file.yaml")
    msg = config_error(load_config, key_path, TrainConfig)          # the same value written in the file
    assert msg.startswith(f"{key_path}: {key}: ") and expect in msg, msg


@pytest.mark.parametrize("override", [
    "schedule.max_nan_failures=0", "runtime.log_every_steps=0", "schedule.rel_threshold=0", "seed=4294967295",
    "data.noise=0", "optim.weight_decay=0", "schedule.test_weight=0", "schedule.test_weight=1",
    "schedule.loss_weights=[0, 1]", "runtime.threads=null", "schedule.max_steps=1", "checkpoint.every_steps=1",
    "schedule.pretrain_stages=[[1, 1e-6]]", "data.percent=0.999",
])
def test_values_on_a_closed_bound_are_accepted(override):
    load_config(None, TrainConfig, [override])


def test_an_empty_stage_list_is_accepted_only_for_a_phase_that_does_not_run():
    cfg = load_config(None, TrainConfig, ["schedule.pretrain=false", "schedule.pretrain_stages=[]"])
    assert cfg.schedule.pretrain_stages == []
    cfg = load_config(None, TrainConfig, ["schedule.finetune=false", "schedule.finetune_stages=[]"])
    assert cfg.schedule.finetune_stages == []
    msg = config_error(load_config, None, TrainConfig, ["schedule.finetune=false", "schedule.pretrain_stages=[]"])
    assert "schedule.pretrain_stages" in msg and "schedule.pretrain: false" in msg, msg


def numeric_fields(cls, where=""):
    """(dotted key, annotation, declared range) of every int/float-valued field, walked with dataclasses."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from numeric_fields(tp, f"{where}{f.name}.")
        elif re.search(r"\b(int|float)\b", str(tp)) and tp is not bool:
            yield f"{where}{f.name}", tp, f.metadata.get("range")


def test_every_numeric_key_declares_a_range():
    for cls in (TrainConfig, GenerationConfig):
        for key, tp, bounds in numeric_fields(cls):
            assert bounds is not None, f"{cls.__name__}.{key}: declare its range, setting(..., low=..., high=...)"


def numbers(tp):
    """The annotation without null, and the number annotations of its positions: one for a number, each item's
    for a fixed-length list or for the items of a list of them (the stage lists)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
    return tp, list(typing.get_args(item)) if typing.get_origin(item) is tuple else [item]


def with_number(tp, bad, position):
    """A value of `tp` holding `bad` at `position` and 1 at the other positions."""
    item = [bad if i == position else 1 for i in range(len(numbers(tp)[1]))]
    tp = numbers(tp)[0]
    if typing.get_origin(tp) is list:
        listed = typing.get_origin(typing.get_args(tp)[0]) is tuple
        return [item] if listed else [1, bad]
    return item if typing.get_origin(tp) is tuple else bad


def outside(bounds: Range, number: type):
    """Numbers just outside `bounds` (its open ends themselves), and NaN and ±inf for a float."""
    step = 1 if number is int else 1e-9
    bad = [] if number is int else [math.nan, math.inf, -math.inf]
    if bounds.low is not None:
        bad.append(bounds.low if bounds.low_open else bounds.low - step)
    if bounds.high is not None:
        bad.append(bounds.high if bounds.high_open else bounds.high + step)
    return bad


def range_cases():
    for cls in (TrainConfig, GenerationConfig):
        for key, tp, bounds in numeric_fields(cls):
            kinds = numbers(tp)[1]
            per_position = bounds if isinstance(bounds, tuple) else (bounds,) * len(kinds)
            for position, (b, number) in enumerate(zip(per_position, kinds)):
                for bad in outside(b, number):
                    yield pytest.param(cls, key, with_number(tp, bad, position), id=f"{key}[{position}]={bad}")


def as_yaml(value) -> str:
    """A number or nested list as YAML writes it (NaN as `.nan`, infinities as `.inf` and `-.inf`)."""
    if isinstance(value, list):
        return "[" + ", ".join(as_yaml(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
    return repr(value)


@pytest.mark.parametrize("cls, key, value", list(range_cases()))
def test_every_declared_range_is_enforced_on_load(cls, key, value):
    """Each number just outside its declared range (and NaN/inf for each float) is refused, naming the key."""
    override = f"{key}={as_yaml(value)}"
    msg = config_error(load_config, None, cls, [override])
    assert f" {key}" in f" {msg.partition(': ')[2]}" and "must" in msg, (override, msg)


@pytest.mark.parametrize("text, key", [("inner: {scale: .nan}", "inner.scale"), ("inner: {limit: .inf}", "inner.limit"),
                                       ("pair: [1, -.inf]", "pair[1]"), ("inner: {scale: -.inf}", "inner.scale")])
def test_non_finite_floats_are_refused_without_a_declared_range(tmp_path, text, key):
    msg = config_error(load_config, write(tmp_path, text + "\n"), Outer)
    assert f"{key}: must be a finite number" in msg, msg


def test_check_ranges_on_configs_built_in_code():
    with pytest.raises(ConfigError, match=r"^data\.noise: must lie in \[0, 1000\], got nan$"):
        DataConfig(noise=math.nan).validate()
    with pytest.raises(ConfigError, match=r"^schedule\.pretrain_stages\[0\]: lr multiplier"):
        ScheduleConfig(pretrain_stages=[(1, -1.0)]).validate()
    with pytest.raises(ConfigError, match=r"^checkpoint\.every_steps: "):
        check_ranges(CheckpointConfig(every_steps=0), "checkpoint")
    check_ranges(TrainConfig())
    assert from_dict(TrainConfig, to_dict(TrainConfig())) == TrainConfig()       # the defaults are in range


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_training_configs_load(path):
    assert isinstance(load_config(path, TrainConfig), TrainConfig)


@pytest.mark.parametrize("path", sorted((CONFIGS / "data").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_data_configs_load(path):
    assert isinstance(load_config(path, GenerationConfig), GenerationConfig)


def test_shipped_configs_exist():
    assert len(list(CONFIGS.glob("*.yaml"))) >= 3 and len(list((CONFIGS / "data").glob("*.yaml"))) >= 3


def test_train_cli_refuses_an_infinite_lr_before_writing_anything(tmp_path):
    """`bcrdist train --set optim.lr=.inf`: one line on stderr, exit status 2, no run directory."""
    run_dir = tmp_path / "run"
    path = write(tmp_path, f"run_dir: {run_dir}\nresults_table: {tmp_path / 'results.tsv'}\n"
                           f"data: {{path: {tmp_path / 'no_data'}}}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    env = {**os.environ, "BCRDIST_TRACEBACK": ""}
    proc = subprocess.run([sys.executable, "-m", "bcrdist", "train", "--config", str(path), "--set", "optim.lr=.inf"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc
    err = proc.stderr.strip()
    assert err == ("bcrdist train: error: --set optim.lr=.inf: optim.lr: must be a finite number > 0, "
                   "got inf"), proc.stderr
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not run_dir.exists()
