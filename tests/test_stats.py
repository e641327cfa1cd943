"""`bcrdist stats` (`bcrdist.data.stats`): streamed per-field statistics stored in the manifest."""

import json

import h5py
import numpy as np
import pytest

from bcrdist.data.format import read_manifest
from bcrdist.data.synthetic import make_fan_file
from data_helpers import cli


def test_stats_are_streamed_and_stored(tmp_path, capsys):
    src = make_fan_file(tmp_path / "src.h5", 90)
    cli(capsys, "shard", src, tmp_path / "ds", "--samples-per-shard", 40, "--quiet")
    stats = read_manifest(tmp_path / "ds").statistics
    with h5py.File(src) as fh:
        for name in ("measure", "coe"):
            x = fh[name][()].astype(np.float64)
            s = stats[name]
            assert s["count"] == x.size and s["nonfinite"] == 0
            assert s["min"] == x.min() and s["max"] == x.max()
            assert s["mean"] == pytest.approx(x.mean(), rel=1e-12, abs=1e-14)
            assert s["std"] == pytest.approx(x.std(), rel=1e-12)
    path = tmp_path / "ds" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["statistics"] = None
    path.write_text(json.dumps(raw))
    rc, out, _ = cli(capsys, "stats", tmp_path / "ds", "--slab-mb", 0.001)
    assert rc == 0 and "coe" in out
    again = read_manifest(tmp_path / "ds").statistics
    for name, s in stats.items():
        assert again[name]["count"] == s["count"] and again[name]["mean"] == pytest.approx(s["mean"], abs=1e-14)
