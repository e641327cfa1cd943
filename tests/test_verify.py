"""`bcrdist verify` (`bcrdist.data.verify`): truncated, corrupt, missing and non-finite shards, one line each."""

import numpy as np
import pytest

from bcrdist.data.format import write_manifest, write_shard
from data_helpers import cli


@pytest.mark.parametrize("kind, expected", [
    ("truncated", "bytes, the manifest says"),
    ("corrupt", "SHA-256 mismatch"),
    ("missing", "shard file missing"),
    ("nan", "dataset 'measure': non-finite value (NaN or inf) in sample 9"),
])
def test_verify_reports_bad_shards(tmp_path, capsys, kind, expected):
    ds = tmp_path / "ds"
    rng = np.random.default_rng(0)
    infos = []
    for i in range(3):
        measure = rng.random((4, 3, 2)).astype("f4")
        if kind == "nan" and i == 2:
            measure[1, 0, 0] = np.inf
        infos.append(write_shard(ds, i, 4 * i, {"measure": measure}))
    write_manifest(ds, infos, provenance={"tool": "test"})
    shard = ds / "shard-00001.h5"
    if kind == "truncated":
        shard.write_bytes(shard.read_bytes()[:-64])
    elif kind == "corrupt":
        data = bytearray(shard.read_bytes())
        data[-8] ^= 0x01
        shard.write_bytes(bytes(data))
    elif kind == "missing":
        shard.unlink()
    rc, out, err = cli(capsys, "verify", ds, "--quiet")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], err
    assert ("shard-00002.h5" if kind == "nan" else "shard-00001.h5") in lines[0]
