"""The run's provenance record (bcrdist.train.provenance): version, source revision, config hash, data set."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bcrdist
from bcrdist.config import load_config, to_dict
from bcrdist.train.config import TrainConfig
from bcrdist.train.provenance import config_sha256, run_provenance, source_revision

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_config_hash_is_sha256_of_canonical_json():
    assert config_sha256({"b": 1, "a": [1, 2]}) == hashlib.sha256(b'{"a":[1,2],"b":1}').hexdigest()
    assert config_sha256({"a": [1, 2], "b": 1}) == config_sha256({"b": 1, "a": [1, 2]})


def test_config_hash_follows_the_resolved_config():
    base = load_config(None, TrainConfig)
    assert config_sha256(base) == config_sha256(load_config(None, TrainConfig))
    assert config_sha256(base) != config_sha256(load_config(None, TrainConfig, ["data.noise=5"]))
    assert config_sha256(base) == config_sha256(json.loads(json.dumps(to_dict(base))))


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_revision_of_this_checkout():
    commit, dirty = source_revision()
    assert commit == git("rev-parse", "HEAD")
    assert dirty == bool(git("status", "--porcelain", "--untracked-files=no"))


def test_record_fields():
    cfg = load_config(None, TrainConfig)
    record = run_provenance(cfg, "abc123")
    assert set(record) == {"bcrdist_version", "git_revision", "git_dirty", "config_sha256", "dataset_id",
                           "dataset_grid", "torch_version"}
    assert record["dataset_grid"] is None
    assert record["bcrdist_version"] == bcrdist.__version__ and record["torch_version"] == torch.__version__
    assert record["dataset_id"] == "abc123" and record["config_sha256"] == config_sha256(cfg)
    json.dumps(record)                                            # JSON-ready as it is


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_no_revision_outside_bcrdists_own_checkout(tmp_path):
    """A copy of the package (like a wheel in site-packages), even inside some other git repository."""
    other = tmp_path / "other-repo"
    site = other / "lib" / "site-packages"
    shutil.copytree(ROOT / "bcrdist", site / "bcrdist", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    code = ("import bcrdist, json; from bcrdist.train.provenance import source_revision; "
            "print(json.dumps([bcrdist.__file__, source_revision()]))")
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    where, revision = json.loads(out.stdout)
    assert where.startswith(str(site)) and revision == [None, None]
