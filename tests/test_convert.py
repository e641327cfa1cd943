"""`bcrdist shard` (`bcrdist.data.convert`): shard → merge round trips, resume, bad-input errors and bounded
memory."""

import tracemalloc

import h5py
import numpy as np
import pytest

from bcrdist.data.format import read_manifest
from bcrdist.data.synthetic import make_fan_file, make_farfield_file
from bcrdist.data.verify import verify_dataset
from data_helpers import assert_same_file, cli


@pytest.mark.parametrize("layout", ["fan", "farfield", "farfield-real-only"])
def test_shard_merge_roundtrip_is_byte_identical(tmp_path, capsys, layout):
    src = tmp_path / "src.h5"
    if layout == "fan":
        make_fan_file(src, 257)
    else:
        make_farfield_file(src, 257, imag=layout == "farfield")
    # a tiny slab forces many partial reads and writes per shard
    rc, out, _ = cli(capsys, "shard", src, tmp_path / "ds", "--samples-per-shard", 60, "--slab-mb", 0.01)
    assert rc == 0 and "shard-00004.h5: samples 240–256 written" in out
    manifest = read_manifest(tmp_path / "ds")
    assert [s["num_samples"] for s in manifest.shards] == [60, 60, 60, 60, 17]
    if layout == "farfield":
        assert manifest.datasets["farfield"].dtype == np.complex64 and manifest.datasets["image"].shape == (8, 8)
        with h5py.File(src) as fh, h5py.File(manifest.shard_path(1)) as sh:
            # sample j is column j reshaped (√M, √M): the original's .T.reshape(N, √M, √M)
            np.testing.assert_array_equal(sh["farfield"][5].real, fh["farfield.real"][:, 65].reshape(10, 10))
            np.testing.assert_array_equal(sh["farfield"][5].imag, fh["farfield.imag"][:, 65].reshape(10, 10))
    rc, out, _ = cli(capsys, "merge", tmp_path / "ds", tmp_path / "back.h5", "--slab-mb", 0.01)
    assert rc == 0
    assert_same_file(src, tmp_path / "back.h5")
    rc, _, err = cli(capsys, "merge", tmp_path / "ds", tmp_path / "back.h5")
    assert rc == 2 and "exists" in err


def test_shard_resumes_and_rewrites_only_bad_shards(tmp_path, capsys):
    src = make_fan_file(tmp_path / "src.h5", 100, measure2=False)
    assert cli(capsys, "shard", src, tmp_path / "ds", "--samples-per-shard", 30)[0] == 0
    first = read_manifest(tmp_path / "ds")
    shard1 = tmp_path / "ds" / "shard-00001.h5"
    data = bytearray(shard1.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard1.write_bytes(bytes(data))
    (tmp_path / "ds" / "shard-00002.h5.json").unlink()
    (tmp_path / "ds" / ".shard-00003.h5.999.tmp").write_bytes(b"partial")   # a killed writer's leftover
    rc, out, _ = cli(capsys, "shard", src, tmp_path / "ds", "--samples-per-shard", 30)
    assert rc == 0
    assert "shard-00000.h5: samples 0–29 already converted" in out
    assert "shard-00001.h5: samples 30–59 written" in out and "shard-00002.h5: samples 60–89 written" in out
    assert "shard-00003.h5: samples 90–99 already converted" in out
    assert read_manifest(tmp_path / "ds").shards == first.shards
    assert verify_dataset(tmp_path / "ds") == []
    rc, _, err = cli(capsys, "shard", src, tmp_path / "ds", "--samples-per-shard", 50)
    assert rc == 2 and "shard-00002.h5 which this conversion would not produce" in err


def _bad_source(tmp_path, kind):
    src = tmp_path / "src.h5"
    make_fan_file(src, 20, measure2=False)
    with h5py.File(src, "a") as fh:
        if kind == "missing":
            del fh["coe"]
        elif kind == "counts":
            fh["measure2"] = np.zeros((19, 16, 8), "f4")
        elif kind == "rank":
            del fh["measure"]
            fh["measure"] = np.zeros((20, 128), "f4")
        elif kind == "nan":
            fh["measure"][13, 2, 3] = np.nan
    if kind == "truncated":
        size = src.stat().st_size
        with open(src, "r+b") as fh:
            fh.truncate(size // 2)
    return src


@pytest.mark.parametrize("kind, expected", [
    ("missing", "dataset 'coe' missing"),
    ("counts", "dataset 'measure2' has shape (19, 16, 8); inconsistent sample count"),
    ("rank", "dataset 'measure' has rank 2"),
    ("nan", "dataset 'measure': non-finite value (NaN or inf) in sample 13"),
    ("truncated", "truncated or corrupt"),
])
def test_bad_source_gives_one_line(tmp_path, capsys, kind, expected):
    src = _bad_source(tmp_path, kind)
    rc, _, err = cli(capsys, "shard", src, tmp_path / "ds", "--samples-per-shard", 8, "--layout", "fan", "--quiet")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(src) in lines[0] and expected in lines[0], err
    assert not list((tmp_path / "ds").glob("manifest.json"))
    assert not list((tmp_path / "ds").glob(".*.tmp"))


@pytest.mark.parametrize("layout", ["fan", "farfield"])
def test_shard_and_merge_use_bounded_memory(tmp_path, layout):
    from bcrdist.data.convert import shard_file
    from bcrdist.data.merge import merge_dataset

    src = tmp_path / "src.h5"
    if layout == "fan":
        make_fan_file(src, 1024, ns=32, nd=32, nt=32, nr=32, measure2=False)   # 12 MiB
    else:
        make_farfield_file(src, 1024, side=32, image_side=32)                 # 12 MiB
    tracemalloc.start()
    try:
        shard_file(src, tmp_path / "ds", 512, slab_bytes=256 << 10)
        _, shard_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        merge_dataset(tmp_path / "ds", tmp_path / "back.h5", slab_bytes=256 << 10)
        _, merge_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a few slabs and 1 MiB shard chunks, well below the 12 MiB of data
    assert shard_peak < 6 << 20 and merge_peak < 6 << 20, (shard_peak, merge_peak)
    assert_same_file(src, tmp_path / "back.h5")
