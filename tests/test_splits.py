"""`bcrdist split` (`bcrdist.data.splits`): the original's split rule and small, checked split files."""

import json
import shutil

import numpy as np
import pytest

from bcrdist.data.format import read_manifest
from bcrdist.data.splits import load_split, make_splits, original_split_counts, parse_fraction
from bcrdist.data.synthetic import make_fan_file
from bcrdist.errors import ConfigError, DataError
from data_helpers import cli


def test_split_rule_matches_the_original():
    assert original_split_counts(20000, 0.8) == (16000, 4000)
    assert original_split_counts(20000, parse_fraction(".3/.4")) == (14999, 5001)
    assert original_split_counts(20480, 0.8) == (16384, 4096)
    assert original_split_counts(8000, 0.5) == (4000, 4000)
    parts = make_splits(20000, 0.8, val=1024)
    assert parts["train"][0] == 0 and len(parts["train"]) == 16000 - 1024
    assert parts["val"][0] == 16000 - 1024 and parts["val"][-1] == 15999
    assert parts["test"][0] == 16000 and len(parts["test"]) == 4000
    rnd = make_splits(1000, 0.7, val=50, random=True, seed=3)
    assert [len(rnd[k]) for k in ("train", "val", "test")] == [650, 50, 300]
    assert len(np.unique(np.concatenate(list(rnd.values())))) == 1000
    again = make_splits(1000, 0.7, val=50, random=True, seed=3)
    assert all(np.array_equal(rnd[k], again[k]) for k in rnd)
    assert not np.array_equal(rnd["test"], make_splits(1000, 0.7, random=True, seed=4)["test"])
    with pytest.raises(ConfigError):
        original_split_counts(100, 1.0)
    with pytest.raises(ConfigError):
        make_splits(100, 0.5, val=50)


def test_split_files_are_small_and_checked(tmp_path, capsys):
    cli(capsys, "shard", make_fan_file(tmp_path / "src.h5", 120), tmp_path / "ds", "--samples-per-shard", 50,
        "--quiet")
    rc, out, _ = cli(capsys, "split", tmp_path / "ds", "--percent", "4/5", "--val", "16")
    assert rc == 0 and "train: 80 samples" in out and "val: 16 samples" in out and "test: 24 samples" in out
    doc = json.loads((tmp_path / "ds" / "splits" / "train.json").read_text())
    assert doc["ranges"] == [[0, 80]]
    rc, out, _ = cli(capsys, "split", tmp_path / "ds", "--random", "--seed", "1", "--out", tmp_path / "rnd")
    assert rc == 0 and "indices" in json.loads((tmp_path / "rnd" / "test.json").read_text())
    manifest = read_manifest(tmp_path / "ds")
    assert len(load_split(manifest, tmp_path / "rnd" / "test.json")) == 24
    other = tmp_path / "rnd" / "test.json"
    doc = json.loads(other.read_text())
    doc["dataset_id"] = "0123456789abcdef"
    other.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="made for data set 0123456789abcdef"):
        load_split(manifest, other)
    shutil.copy(other, tmp_path / "ds" / "splits" / "stale.json")
    rc, _, err = cli(capsys, "verify", tmp_path / "ds", "--quiet")
    assert rc == 2 and "stale.json: made for data set" in err
