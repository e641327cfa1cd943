"""The shard/manifest writer contract (`bcrdist.data.format`) and manifest checks."""

import json

import h5py
import numpy as np
import pytest

from bcrdist.data.format import (ShardWriter, existing_shard, read_manifest, shard_name,
                                 write_manifest, write_shard)
from bcrdist.errors import DataError
from bcrdist.fileio import file_sha256


def _arrays(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"measure": rng.standard_normal((n, 4, 6)).astype("f4"),
            "farfield": (rng.standard_normal((n, 5, 5)) + 1j * rng.standard_normal((n, 5, 5))).astype("c8"),
            "radius": rng.random(n)}


def test_write_shard_roundtrip_with_complex_and_chunking(tmp_path):
    arrays = _arrays(7)
    info = write_shard(tmp_path, 3, 100, arrays, attrs={"family": "disks"})
    assert info["file"] == "shard-00003.h5" and info["num_samples"] == 7 and info["first_index"] == 100
    assert info["sha256"] == file_sha256(tmp_path / "shard-00003.h5")
    with h5py.File(tmp_path / info["file"]) as fh:
        assert fh.attrs["first_index"] == 100 and fh.attrs["family"] == "disks"
        for name, arr in arrays.items():
            assert fh[name].dtype == arr.dtype
            assert fh[name].chunks[0] >= 1 and fh[name].chunks[1:] == arr.shape[1:]
            np.testing.assert_array_equal(fh[name][()], arr)
    assert not list(tmp_path.glob(".*.tmp"))


def test_shard_bytes_are_reproducible(tmp_path):
    a = write_shard(tmp_path / "a", 0, 0, _arrays(5))
    b = write_shard(tmp_path / "b", 0, 0, _arrays(5))
    assert a["sha256"] == b["sha256"]


def test_write_shard_rejects_bad_arrays(tmp_path):
    arrays = _arrays(4)
    arrays["radius"] = arrays["radius"][:3]
    with pytest.raises(DataError, match="inconsistent sample counts"):
        write_shard(tmp_path, 0, 0, arrays)
    with pytest.raises(DataError, match="unsupported dtype"):
        write_shard(tmp_path, 0, 0, {"names": np.array(["a", "b"])})
    with pytest.raises(DataError, match="reserved"):
        write_shard(tmp_path, 0, 0, {"x": np.zeros(2)}, attrs={"first_index": 5})
    assert not list(tmp_path.glob("shard-*")) and not list(tmp_path.glob(".*.tmp"))


def test_interrupted_writer_leaves_nothing_that_looks_complete(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, 0, 0, 10) as writer:
            writer.create("x", (3,), "f4")
            writer.write("x", 0, np.ones((4, 3), "f4"))
            raise RuntimeError("killed")
    assert not list(tmp_path.glob("shard-*")) and not list(tmp_path.glob(".*"))
    with ShardWriter(tmp_path, 0, 0, 10) as writer:
        writer.create("x", (3,), "f4")
        writer.write("x", 0, np.ones((4, 3), "f4"))
        with pytest.raises(DataError, match="incomplete"):
            writer.commit()
    assert existing_shard(tmp_path, 0, 0, 10) is None


def test_existing_shard_resume_checks(tmp_path):
    info = write_shard(tmp_path, 0, 0, _arrays(6))
    assert existing_shard(tmp_path, 0, 0, 6) == info
    assert existing_shard(tmp_path, 0, 1, 6) is None          # other range
    assert existing_shard(tmp_path, 0, 0, 5) is None
    assert existing_shard(tmp_path, 1, 0, 6) is None          # absent
    path = tmp_path / shard_name(0)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF                                          # corrupt one byte
    path.write_bytes(bytes(data))
    assert existing_shard(tmp_path, 0, 0, 6) is None
    write_shard(tmp_path, 0, 0, _arrays(6))
    (tmp_path / "shard-00000.h5.json").unlink()                 # killed between shard and side file
    assert existing_shard(tmp_path, 0, 0, 6) is None


def test_manifest_sorted_checked_and_described(tmp_path):
    infos = [write_shard(tmp_path, i, first, _arrays(n, seed=i))
             for i, (first, n) in enumerate([(0, 5), (5, 3), (8, 4)])]
    path = write_manifest(tmp_path, infos[::-1], provenance={"tool": "test", "seed": 1, "config": {"a": 1}})
    raw = json.loads(path.read_text())
    assert [s["first_index"] for s in raw["shards"]] == [0, 5, 8] and raw["num_samples"] == 12
    assert raw["datasets"]["farfield"] == {"shape": [5, 5], "dtype": "<c8", "chunk_samples": 5}
    assert raw["datasets"]["radius"]["shape"] == [] and raw["provenance"]["version"]
    m = read_manifest(tmp_path)
    assert m.num_samples == 12 and list(m.shard_of(np.array([0, 4, 5, 7, 8, 11]))) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(DataError, match="not contiguous"):
        write_manifest(tmp_path, [infos[0], infos[2]], provenance={"tool": "test"})
    other = write_shard(tmp_path / "o", 0, 12, {"measure": np.zeros((2, 4, 6), "f4")})
    (tmp_path / "o" / other["file"]).rename(tmp_path / "shard-00003.h5")
    other["file"] = "shard-00003.h5"
    with pytest.raises(DataError, match="differ"):
        write_manifest(tmp_path, infos + [other], provenance={"tool": "test"})


def test_read_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="no manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "bcrdist-sharded-hdf5", "format_version": 99}))
    with pytest.raises(DataError, match="not supported"):
        read_manifest(tmp_path)
