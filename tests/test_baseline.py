"""The `bcrdist baseline` command (`bcrdist.cli.baseline`, `bcrdist.train.baseline`): metrics and λ of the Born
inversion on a split of generated data, and a one-line error for data without far fields."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bcrdist.cli import main
from bcrdist.data.generate import generate
from bcrdist.data.splits import write_splits
from generation_helpers import NA, NR, RADIUS, K, demo_gaussian_config
from train_helpers import make_dataset


def test_cli_reports_metrics_and_lambda(tmp_path, capsys):
    data = tmp_path / "data"
    generate(demo_gaussian_config((0.05, 0.1), 40, samples_per_shard=20), data, progress=False)
    write_splits(data, 0.75, val=10)
    out = tmp_path / "baseline.json"
    assert main(["baseline", "--data", str(data), "--noise", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["metrics"]) == {"weighted", "rel_l2", "psnr"}
    assert set(doc["metrics"]["weighted"]) == {"mean", "std", "max", "count"}
    assert doc["metrics"]["weighted"]["count"] == 10 and doc["val_count"] == 10
    assert 0 < doc["metrics"]["weighted"]["mean"] < 0.5
    assert np.isfinite(doc["lambda"]) and doc["lambda"] > 0
    assert doc["operator"] == {"k": pytest.approx(K), "Na": NA, "Nr": NR, "polar_radius": RADIUS}
    assert "Born baseline" in capsys.readouterr().out


def test_cli_one_line_error_without_farfield(tmp_path, capsys):
    data = make_dataset(tmp_path / "nofar", n=40, val=8)
    assert main(["baseline", "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no 'farfield' dataset" in err and err.startswith("bcrdist baseline: error:")
