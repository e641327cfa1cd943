"""The data commands (`bcrdist.cli.data`) run end to end as `python -m bcrdist` processes."""

import pathlib
import subprocess
import sys

from bcrdist.data.synthetic import make_fan_file
from data_helpers import assert_same_file

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_data_commands_run_end_to_end(tmp_path):
    make_fan_file(tmp_path / "src.h5", 30)
    for args in (["shard", tmp_path / "src.h5", tmp_path / "ds", "--samples-per-shard", "7", "--quiet"],
                 ["split", tmp_path / "ds", "--percent", "0.5"], ["stats", tmp_path / "ds"],
                 ["verify", tmp_path / "ds", "--quiet"], ["merge", tmp_path / "ds", tmp_path / "back.h5"]):
        result = subprocess.run([sys.executable, "-m", "bcrdist", *map(str, args)], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    assert_same_file(tmp_path / "src.h5", tmp_path / "back.h5")
