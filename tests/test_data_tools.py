"""The data tools: shard → merge round trips, resume, MPI, stats, splits, verify, and bad-input errors."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tracemalloc

import h5py
import numpy as np
import pytest

from bcrdist.cli import main
from bcrdist.data.format import read_manifest, write_manifest, write_shard
from bcrdist.distributed.mpi import launched_by_mpi
from bcrdist.data.splits import load_split, make_splits, original_split_counts, parse_fraction
from bcrdist.data.synthetic import make_fan_file, make_farfield_file
from bcrdist.data.verify import verify_dataset
from bcrdist.errors import ConfigError, DataError

REPO = pathlib.Path(__file__).resolve().parents[1]


def cli(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_same_file(a, b):
    """Same datasets, dtypes, shapes, bytes, creation properties and attributes."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert sorted(fa) == sorted(fb)
        for name in fa:
            x, y = fa[name], fb[name]
            assert (x.dtype, x.shape, x.chunks, x.compression) == (y.dtype, y.shape, y.chunks, y.compression)
            assert x[()].tobytes() == y[()].tobytes(), name
            assert {k: np.asarray(v).tolist() for k, v in x.attrs.items()} == \
                   {k: np.asarray(v).tolist() for k, v in y.attrs.items()}
        assert {k: np.asarray(v).tolist() for k, v in fa.attrs.items()} == \
               {k: np.asarray(v).tolist() for k, v in fb.attrs.items()}


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


def test_merge_samples_layout_of_generated_data(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [{"measure": rng.random((n, 3, 4)).astype("f4"), "farfield": rng.random((n, 2)).astype("c8")}
              for n in (4, 3)]
    infos = [write_shard(tmp_path / "ds", i, first, a) for i, (first, a) in enumerate(zip((0, 4), arrays))]
    write_manifest(tmp_path / "ds", infos, provenance={"tool": "generator"})
    assert main(["merge", str(tmp_path / "ds"), str(tmp_path / "all.h5")]) == 0
    with h5py.File(tmp_path / "all.h5") as fh:
        for name in ("measure", "farfield"):
            np.testing.assert_array_equal(fh[name][()], np.concatenate([a[name] for a in arrays]))


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


def test_mpi_launch_detection_and_plain_process():
    assert not launched_by_mpi({})
    assert launched_by_mpi({"PMI_RANK": "0", "PMI_SIZE": "2"})
    assert launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "4"})
    assert launched_by_mpi({"PMIX_RANK": "1"})
    assert launched_by_mpi({"SLURM_NTASKS": "4"})
    assert not launched_by_mpi({"SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "1"})
    assert not launched_by_mpi({"PMI_RANK": "0", "BCRDIST_MPI": "0"})
    code = ("import sys; from bcrdist.cli import main; rc = main(sys.argv[1:]); "
            "assert 'mpi4py' not in sys.modules; raise SystemExit(rc)")
    env = {k: v for k, v in os.environ.items() if not launched_by_mpi({k: v})}
    src = REPO / "tests" / "fixtures" / "keras" / "bcr_wcomp3_io.h5"
    result = subprocess.run([sys.executable, "-c", code, "verify", str(src)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no manifest" in result.stderr


@pytest.mark.mpi
def test_mpi_ranks_convert_their_own_shards(tmp_path, capsys):
    mpiexec = pathlib.Path(sys.executable).with_name("mpiexec")
    if not mpiexec.exists():
        pytest.skip("no mpiexec next to the Python interpreter")
    src = make_fan_file(tmp_path / "src.h5", 130)
    assert cli(capsys, "shard", src, tmp_path / "serial", "--samples-per-shard", 25, "--quiet")[0] == 0
    env = {k: v for k, v in os.environ.items() if not launched_by_mpi({k: v})}
    result = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "bcrdist", "shard", str(src),
                             str(tmp_path / "mpi"), "--samples-per-shard", "25"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "[rank 1/2] shard-00001.h5: samples 25–49 written" in result.stdout
    assert "[rank 0/2] shard-00002.h5: samples 50–74 written" in result.stdout
    serial, mpi = read_manifest(tmp_path / "serial"), read_manifest(tmp_path / "mpi")
    assert mpi.provenance["mpi_ranks"] == 2
    assert [s["sha256"] for s in mpi.shards] == [s["sha256"] for s in serial.shards]
    assert mpi.statistics == serial.statistics
    result = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "bcrdist", "verify",
                             str(tmp_path / "mpi"), "--quiet"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.count(": ok (130 samples in 6 shards") == 1, result.stderr
    raw = json.loads((tmp_path / "mpi" / "manifest.json").read_text())
    raw["statistics"] = None
    (tmp_path / "mpi" / "manifest.json").write_text(json.dumps(raw))
    result = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "bcrdist", "stats", str(tmp_path / "mpi")],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.count("measure2") == 1, result.stderr
    assert read_manifest(tmp_path / "mpi").statistics == serial.statistics


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


def test_data_commands_run_end_to_end(tmp_path):
    make_fan_file(tmp_path / "src.h5", 30)
    for args in (["shard", tmp_path / "src.h5", tmp_path / "ds", "--samples-per-shard", "7", "--quiet"],
                 ["split", tmp_path / "ds", "--percent", "0.5"], ["stats", tmp_path / "ds"],
                 ["verify", tmp_path / "ds", "--quiet"], ["merge", tmp_path / "ds", tmp_path / "back.h5"]):
        result = subprocess.run([sys.executable, "-m", "bcrdist", *map(str, args)], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    assert_same_file(tmp_path / "src.h5", tmp_path / "back.h5")
