"""The `bcrdist` dispatcher (`bcrdist.cli.main`): a misspelt command, flag or choice names the closest valid
one, a Hydra-style bare `key=value` gets the hint to use `--set`, and every command is registered."""

from __future__ import annotations

import importlib

import pytest

from bcrdist.cli import main
from bcrdist.cli.main import SUBCOMMANDS


def usage_error(capsys, argv) -> str:
    """The last stderr line of a command that argparse refuses (exit status 2)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_bare_key_value_gets_the_set_hint(capsys):
    err = usage_error(capsys, ["train", "schedule.epochs=3"])
    assert err.startswith("bcrdist train: error: unrecognized arguments: schedule.epochs=3")
    assert "use --set schedule.epochs=3" in err, err
    err = usage_error(capsys, ["generate", "--config", "x.yaml", "--out", "o", "family.name=shapes"])
    assert "use --set family.name=shapes" in err, err


def test_bare_key_value_without_a_set_option_gets_no_set_hint(capsys):
    err = usage_error(capsys, ["verify", "data", "a=1"])
    assert "unrecognized arguments: a=1" in err and "--set" not in err, err


@pytest.mark.parametrize("argv, flag, meant", [
    (["train", "--epochs", "3"], "--epochs", "--epoch"),
    (["train", "--confg", "c.yaml"], "--confg", "--config"),
    (["train", "--prnt=all"], "--prnt", "--print"),
    (["config", "keys", "--dta"], "--dta", "--data"),
])
def test_unknown_flag_suggests_the_closest_option(capsys, argv, flag, meant):
    err = usage_error(capsys, argv)
    assert "unrecognized arguments" in err and f"'{flag}': did you mean '{meant}'?" in err, err


def test_unknown_flag_without_a_close_option_gets_no_suggestion(capsys):
    err = usage_error(capsys, ["train", "--zzzzqqqq"])
    assert "unrecognized arguments: --zzzzqqqq" in err and "did you mean" not in err, err


def test_unknown_command_and_choice_suggest_the_closest(capsys):
    err = usage_error(capsys, ["trian"])
    assert "unknown command 'trian'" in err and "did you mean 'train'?" in err, err
    err = usage_error(capsys, ["config", "kyes"])
    assert "invalid choice: 'kyes'" in err and "did you mean 'keys'?" in err, err
    err = usage_error(capsys, ["shard", "a.h5", "out", "--samples-per-shard", "4", "--layout", "fann"])
    assert "did you mean 'fan'?" in err and "choose from" in err, err


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_command_module_provides_its_functions(name):
    module = importlib.import_module(SUBCOMMANDS[name][0])
    fn = name.replace("-", "_")
    assert callable(getattr(module, f"add_{fn}_arguments")) and callable(getattr(module, f"run_{fn}"))
