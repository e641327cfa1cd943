"""The data-generation config (`bcrdist.physics.generation_config`): bad settings are one-line errors
naming the file (or the `--set` that gave the value) and the key, from the loader and from `bcrdist generate`."""

import copy

import pytest

from bcrdist.cli import main as cli_main
from bcrdist.config import apply_overrides, load_config
from bcrdist.errors import ConfigError
from bcrdist.physics.generation_config import GenerationConfig
from generation_helpers import TINY, write_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("override, key", [
    (["colour=red"], "unknown key 'colour'"),
    (["Na=30"], "Na: must be a positive multiple of 4"),
    (["n=sixteen"], "n: expected an integer"),
    (["family.name=circles"], "family.name: expected one of"),
    (["family.gaussian.width=[0.2, 0.1]"], "width: lower bound 0.2 exceeds upper bound 0.1"),
    (["family.gaussian.width=[0.1, 0.2]"], "gaussian.width: tail_sigmas"),
    (["solver.tol=2"], "tol: must lie in (0, 1)"),
    (["box=.nan"], "box: must be a finite number > 0, got nan"),
    (["k_over_pi=-.inf"], "k_over_pi: must be a finite number > 0, got -inf"),
    (["seed=-1"], "seed: must be an integer ≥ 0, got -1"),
    (["samples_per_shard=0"], "samples_per_shard: must be an integer ≥ 1, got 0"),
    (["family.gaussian.count=[0, 3]"], "family.gaussian.count[0]: must be an integer ≥ 1, got 0"),
    (["family.gaussian.amplitude=[0.1, .nan]"], "family.gaussian.amplitude[1]: must be a finite number ≥ 0"),
    (["family.support_radius=.inf"], "family.support_radius: must lie in (0, 0.5], got inf"),
    (["family.shapes.polygon_fraction=1.5"], "family.shapes.polygon_fraction: must lie in [0, 1], got 1.5"),
    (["family.shepp_logan.jitter=0.5"], "family.shepp_logan.jitter: must lie in [0, 0.5), got 0.5"),
    (["solver.restart=0"], "solver.restart: must be an integer ≥ 1, got 0"),
])
def test_bad_config_is_one_line_error_naming_file_and_key(tmp_path, capsys, override, key):
    path = write_config(tmp_path / "bad.yaml", TINY)
    with pytest.raises(ConfigError) as info:
        load_config(path, GenerationConfig, override)
    # an unknown key or a bad value is blamed on the --set that gave it, not on the (valid) file
    where = f"--set {override[0]}"
    assert str(info.value).startswith(where + ": ") and key in str(info.value) and str(path) not in str(info.value)
    if not key.startswith("unknown key"):       # the same value in the file: the file is named
        in_file = write_config(tmp_path / "in_file.yaml", apply_overrides(copy.deepcopy(TINY), override, "test"))
        with pytest.raises(ConfigError) as info:
            load_config(in_file, GenerationConfig)
        assert str(info.value).startswith(f"{in_file}: ") and key in str(info.value)
    assert cli_main(["generate", "--config", str(path), "--out", str(tmp_path / "out"), "--quiet",
                     *sum((["--set", o] for o in override), [])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and key in err and where in err
    assert not (tmp_path / "out").exists()
