"""What produced a run: bcrdist's version and source revision, the config's hash and the data set's id,
recorded in `results.json` and in every checkpoint so a result can be traced to code, config and data.

`run_provenance(cfg, dataset_id, dataset_grid)` returns a JSON-ready mapping:

    bcrdist_version   the package version (bcrdist.__version__)
    git_revision      the commit of the bcrdist source tree that is running, or None when bcrdist is not
                      run from a git checkout (an installed wheel: its version identifies it)
    git_dirty         True when tracked files of that checkout differ from the commit (None without git)
    config_sha256     SHA-256 of the resolved config as canonical JSON (sorted keys, no spaces)
    dataset_id        the data set's id from its manifest.json (a hash of its shards)
    dataset_grid      the data set's grid (`GridInfo.to_record()`: k, angles, sizes, box or polar radius, sign),
                      or None when it records none; `bcrdist evaluate` and `predict` refuse data of other physics
    torch_version     torch.__version__
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import torch

from bcrdist import __version__
from bcrdist.config import to_dict

SOURCE_ROOT = Path(__file__).resolve().parents[2]      # the directory holding the bcrdist package


def config_sha256(cfg: Any) -> str:
    """SHA-256 of a config (dataclass or mapping) as canonical JSON: equal configs, equal hashes."""
    plain = to_dict(cfg) if not isinstance(cfg, dict) else cfg
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_revision() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout bcrdist runs from; (None, None) when it is not one (a wheel in
    site-packages, even inside some other repository, or no git installed)."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != SOURCE_ROOT or not (SOURCE_ROOT / "setup.cfg").is_file():
        return None, None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else bool(status))


def run_provenance(cfg: Any, dataset_id: str | None, dataset_grid: dict | None = None) -> dict:
    """The provenance record of a run with config `cfg` on the data set `dataset_id` whose grid record is
    `dataset_grid` (see the module doc)."""
    commit, dirty = source_revision()
    return {"bcrdist_version": __version__, "git_revision": commit, "git_dirty": dirty,
            "config_sha256": config_sha256(cfg), "dataset_id": dataset_id, "dataset_grid": dataset_grid,
            "torch_version": str(torch.__version__)}
