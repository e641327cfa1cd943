"""Issue 12, data side: data sets are never overwritten by another, corrupt or non-finite data never reach a
batch, shard paths stay inside the data set, and a full disk is one line with the old files intact.

Each case of the issue is reproduced (numbers as there) and its new behaviour asserted: exit status, a
one-line message naming the file, and the files' hashes before and after. A full disk is real: a small tmpfs
(root only; skipped otherwise), filled or resized by the test; a file-size limit (RLIMIT_FSIZE) makes HDF5's
writes fail the same way for any user.
"""

import errno
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import yaml

from bcrdist.data import ShardedDataset
from bcrdist.data import format as data_format
from bcrdist.config import load_config
from bcrdist.data.format import read_manifest, update_manifest, write_manifest, write_shard
from bcrdist.data.generate import generate
from bcrdist.data.merge import merge_dataset
from bcrdist.data.preprocess import Preprocess
from bcrdist.data.splits import write_splits
from bcrdist.data.stats import store_statistics
from bcrdist.data.synthetic import make_fan_file
from bcrdist.distributed.mpi import launched_by_mpi
from bcrdist.errors import DataError
from bcrdist.physics.generation_config import GenerationConfig
from data_helpers import cli
from generation_helpers import TINY

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if not launched_by_mpi({k: v})}


def snapshot(root) -> dict[str, str]:
    """SHA-256 of every file under `root`, by relative path (temporaries included: none may be left)."""
    root = pathlib.Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line(err: str) -> bool:
    return err.strip() != "" and "\n" not in err.strip()


def bcrdist(*args, timeout=120, mpi: int = 0):
    """Run `python -m bcrdist ARGS` (under `mpiexec -n MPI` when mpi > 0) → CompletedProcess."""
    launcher = [str(pathlib.Path(sys.executable).with_name("mpiexec")), "-n", str(mpi)] if mpi else []
    return subprocess.run([*launcher, sys.executable, "-m", "bcrdist", *map(str, args)], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def make_dataset(root, *, nan=None, statistics=True, seed=0) -> pathlib.Path:
    """40 samples in 4 shards of 10: `measure` (4, 6), `coe` (4, 3) float32; splits train 0–15, val 16–19,
    test 20–39. `nan` = (dataset, sample) puts a NaN there."""
    rng = np.random.default_rng(seed)
    arrays = {"measure": rng.standard_normal((40, 4, 6)).astype("f4"),
              "coe": rng.standard_normal((40, 4, 3)).astype("f4")}
    if nan is not None:
        arrays[nan[0]][nan[1], 1, 2] = np.nan
    infos = [write_shard(root, i, 10 * i, {k: v[10 * i:10 * i + 10] for k, v in arrays.items()}) for i in range(4)]
    write_manifest(root, infos, provenance={"tool": "test"})
    if statistics:
        store_statistics(root)
    write_splits(root, 0.5, val=4)
    return pathlib.Path(root)


# --- 3. shard / split / stats / merge never replace another data set or other splits ----------------------

def test_shard_refuses_a_folder_holding_another_data_set(tmp_path, capsys):
    a = make_fan_file(tmp_path / "a.h5", 40, seed=1, measure2=False)
    b = make_fan_file(tmp_path / "b.h5", 40, seed=2, measure2=False)
    ds = tmp_path / "ds"
    assert cli(capsys, "shard", a, ds, "--samples-per-shard", 10, "--quiet")[0] == 0
    assert cli(capsys, "split", ds, "--percent", "0.5")[0] == 0
    before = snapshot(ds)
    # another source, the same shard count: was overwritten with exit 0
    rc, _, err = cli(capsys, "shard", b, ds, "--samples-per-shard", 10, "--quiet")
    assert rc == 2 and one_line(err), err
    assert f"{ds / 'manifest.json'}: holds another data set (source '{a.resolve()}'" in err and "--overwrite" in err
    # the same source cut into other shards of the same count (40 = 4 × 10 = 3 × 13 + 1)
    rc, _, err = cli(capsys, "shard", a, ds, "--samples-per-shard", 13, "--quiet")
    assert rc == 2 and one_line(err) and "samples_per_shard 10, this conversion 13" in err, err
    assert snapshot(ds) == before
    # no manifest yet (an interrupted conversion of a): the shards tell where they came from
    partial = tmp_path / "partial"
    shutil.copytree(ds, partial)
    (partial / "manifest.json").unlink()
    rc, _, err = cli(capsys, "shard", b, partial, "--samples-per-shard", 10, "--quiet")
    assert rc == 2 and one_line(err) and f"{partial / 'shard-00000.h5'}: made from {a.resolve()}" in err, err
    # the source file itself replaced since the conversion
    make_fan_file(a, 40, seed=3, measure2=False)
    rc, _, err = cli(capsys, "shard", a, ds, "--samples-per-shard", 10, "--quiet")
    assert rc == 2 and one_line(err) and "not from this source as it is now" in err, err
    assert snapshot(ds) == before
    # --overwrite replaces the data set, and the splits made for the old one go with it
    rc, out, _ = cli(capsys, "shard", b, ds, "--samples-per-shard", 10, "--overwrite")
    assert rc == 0 and "removing the data set there (--overwrite)" in out
    assert read_manifest(ds).provenance["source"] == str(b.resolve())
    assert not list((ds / "splits").glob("*.json"))
    assert cli(capsys, "verify", ds, "--quiet")[0] == 0
    # running the same conversion again is a resume, not another data set
    after = snapshot(ds)
    assert cli(capsys, "shard", b, ds, "--samples-per-shard", 10, "--quiet")[0] == 0
    assert snapshot(ds) == after


def test_split_refuses_to_replace_other_splits(tmp_path, capsys):
    ds = tmp_path / "ds"
    assert cli(capsys, "shard", make_fan_file(tmp_path / "src.h5", 60), ds, "--samples-per-shard", 25,
               "--quiet")[0] == 0
    assert cli(capsys, "split", ds, "--percent", "0.5", "--val", "6")[0] == 0
    before = snapshot(ds)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (ds / "splits").iterdir()}
    rc, _, err = cli(capsys, "split", ds, "--percent", "0.75")
    assert rc == 2 and one_line(err), err
    assert f"{ds / 'splits' / 'train.json'}: holds another split (24 samples" in err and "--overwrite" in err
    assert snapshot(ds) == before
    # the same splits again: accepted, files not even rewritten
    assert cli(capsys, "split", ds, "--percent", "0.5", "--val", "6")[0] == 0
    assert snapshot(ds) == before and {p.name: p.stat().st_mtime_ns for p in (ds / "splits").iterdir()} == mtimes
    # --overwrite replaces them, and the validation split the new rule does not make is removed
    rc, out, _ = cli(capsys, "split", ds, "--percent", "0.75", "--overwrite")
    assert rc == 0 and "train: 45 samples" in out
    assert sorted(p.name for p in (ds / "splits").iterdir()) == ["test.json", "train.json"]


def test_stats_writes_only_into_the_data_set_it_read(tmp_path):
    ds = make_dataset(tmp_path / "ds", statistics=False)
    shards = {k: v for k, v in snapshot(ds).items() if k.startswith("shard")}
    before = read_manifest(ds)
    store_statistics(ds)
    after = read_manifest(ds)
    assert after.statistics["coe"]["count"] == 40 * 12 and after.dataset_id == before.dataset_id
    assert {k: v for k, v in after.raw.items() if k != "statistics"} == \
        {k: v for k, v in before.raw.items() if k != "statistics"}
    assert {k: v for k, v in snapshot(ds).items() if k.startswith("shard")} == shards
    # statistics computed for another data set (the manifest replaced meanwhile) are not written
    manifest_bytes = (ds / "manifest.json").read_bytes()
    with pytest.raises(DataError, match="manifest.json: now describes data set .*, not 0123456789abcdef"):
        update_manifest(ds, expect_id="0123456789abcdef", statistics=None)
    assert (ds / "manifest.json").read_bytes() == manifest_bytes


def test_merge_never_writes_over_the_data_set_it_reads(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds")
    before = snapshot(ds)
    for target in (ds / "shard-00001.h5", ds / "manifest.json", ds / "shard-00000.h5.json"):
        rc, _, err = cli(capsys, "merge", ds, target, "--layout", "samples", "--overwrite")
        assert rc == 2 and one_line(err) and f"{target}: is a file of the data set being merged" in err, err
    rc, _, err = cli(capsys, "merge", ds, tmp_path, "--layout", "samples")
    assert rc == 2 and one_line(err) and f"{tmp_path}: is a folder" in err
    assert snapshot(ds) == before


# --- 5. corrupt bytes and non-finite values never reach a batch ---------------------------------------------

def _flip_a_data_byte(path: pathlib.Path, dataset: str, sample: int) -> None:
    """Change one byte inside `dataset`'s stored values of `sample` (the HDF5 structure stays valid)."""
    with h5py.File(path, "r") as fh:
        dset = fh[dataset]
        offset = dset.id.get_chunk_info(0).byte_offset + sample * dset.dtype.itemsize * int(np.prod(dset.shape[1:]))
    data = bytearray(path.read_bytes())
    data[offset + 1] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped byte", "shard of another data set"])
def test_corrupt_shard_is_refused_before_its_samples_are_used(tmp_path, damage):
    root = make_dataset(tmp_path / "ds")
    clean = next(iter(ShardedDataset(root, batch_size=40, shuffle=False, exact=True)))["measure"].numpy()
    shard = root / "shard-00001.h5"
    if damage == "flipped byte":
        _flip_a_data_byte(shard, "measure", 2)
    else:   # same shapes, same size, other values: only the checksum tells
        other = make_dataset(tmp_path / "other", seed=7)
        shutil.copy(other / "shard-00001.h5", shard)
    assert shard.stat().st_size == read_manifest(root).shards[1]["bytes"]
    # without the checks this data would be used (what training did before)
    unchecked = ShardedDataset(root, batch_size=40, shuffle=False, exact=True, verify=False)
    assert not np.array_equal(next(iter(unchecked))["measure"].numpy(), clean)
    for iterate in (iter, lambda ds: iter(ds.loader())):
        ds = ShardedDataset(root, batch_size=5, shuffle=False, exact=True, block_size=5, shuffle_blocks=1)
        seen = []
        with pytest.raises(DataError) as info:
            for batch in iterate(ds):
                seen.append(batch["index"].numpy())
        message = str(info.value)
        assert one_line(message) and message.startswith(f"{shard}: SHA-256 ")
        assert "differs from the manifest's" in message
        assert seen and np.concatenate(seen).max() < 10        # nothing of shard 1 (samples 10–19) was handed out


def test_a_shard_is_hashed_once_and_rechecked_when_replaced(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "ds")
    hashed = []
    real = data_format.fd_sha256
    monkeypatch.setattr(data_format, "fd_sha256", lambda fd: hashed.append(fd) or real(fd))
    ds = ShardedDataset(root, batch_size=4, max_open_shards=1)
    for epoch in range(3):
        ds.set_epoch(epoch)
        assert sum(len(b["index"]) for b in ds) == 40
    assert len(hashed) == 4                 # once per shard, although every shard was reopened each epoch
    # DataLoader workers (re-created every epoch) share what passed with the reader and with each other
    workers = ShardedDataset(root, batch_size=4)
    batches = list(torch.utils.data.DataLoader(workers, batch_size=None, num_workers=2))
    assert sum(len(b["index"]) for b in batches) == 40 and workers._passed[:, 0].tolist() == [1, 1, 1, 1]
    # a shard replaced after it passed is checked again (another file: other inode and ctime)
    replaced = root / "shard-00002.h5"
    data = bytearray(replaced.read_bytes())
    data[-100] ^= 1
    replaced.unlink()
    replaced.write_bytes(bytes(data))
    ds.set_epoch(3)
    with pytest.raises(DataError, match="shard-00002.h5: SHA-256"):
        list(ds)


@pytest.mark.parametrize("statistics", [True, False], ids=["statistics count it", "no statistics"])
def test_nan_in_a_training_target_is_refused_naming_split_sample_and_shard(tmp_path, statistics):
    root = make_dataset(tmp_path / "ds", nan=("coe", 13), statistics=statistics)
    spec = Preprocess(input="measure", target="coe")
    ds = ShardedDataset(root, split="train", batch_size=4, preprocess=spec)
    with pytest.raises(DataError) as info:
        next(iter(ds))                       # the first batch: not after epochs of training
    assert str(info.value) == (f"{root / 'shard-00001.h5'}: dataset 'coe': non-finite value (NaN or inf) in "
                               f"sample 13 of split 'train' of {root}; the reader refuses it")
    # the trainer passes index arrays: split_name names them
    ds = ShardedDataset(root, split=np.arange(16), split_name="train", batch_size=4, preprocess=spec)
    with pytest.raises(DataError, match="in sample 13 of split 'train' of "):
        list(ds.loader())
    # a split that does not hold the sample reads fine, from the same shard
    val = ShardedDataset(root, split="val", batch_size=2, preprocess=spec, exact=True, shuffle=False)
    assert [int(i) for b in val for i in b["index"]] == [16, 17, 18, 19]


def test_a_refusal_in_a_dataloader_worker_keeps_its_one_line(tmp_path):
    """torch re-raises a worker's exception wrapped in "Caught DataError in DataLoader worker process …" and
    its traceback; the loader hands on the worker's own one-line message."""
    root = make_dataset(tmp_path / "ds", nan=("coe", 13))
    ds = ShardedDataset(root, split="train", batch_size=4, preprocess=Preprocess(input="measure", target="coe"))
    with pytest.raises(DataError) as info:
        list(ds.loader(num_workers=2))
    assert str(info.value) == (f"{root / 'shard-00001.h5'}: dataset 'coe': non-finite value (NaN or inf) in "
                               f"sample 13 of split 'train' of {root}; the reader refuses it")


def test_training_on_a_nan_target_stops_at_once_naming_the_split(tmp_path):
    """bcrdist train on data with a NaN in one training target: exit 2 before any epoch ends, one line naming
    the shard, the sample and the config's split, and no best model claimed."""
    root = make_dataset(tmp_path / "ds", nan=("coe", 13))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "data": {"path": str(root), "n_valid": 4},
                                   "model": {"alpha": 2, "n_cnn": 1, "n_cnn3": 1, "levels": 1},
                                   "schedule": {"batch_size": 4, "epochs": 1, "pretrain_stages": [[1, 1.0]],
                                                "finetune_stages": [[2, 1.0]]},
                                   "results_table": None, "runtime": {"compile": "false", "threads": 1}}))
    result = bcrdist("train", "--config", cfg)
    assert result.returncode == 2 and one_line(result.stderr), result.stderr
    assert (f"{root / 'shard-00001.h5'}: dataset 'coe': non-finite value (NaN or inf) in sample 13 of split "
            f"'train'") in result.stderr
    assert not (tmp_path / "run" / "results.json").exists()


def test_nan_in_a_test_input_fails_the_evaluation_reader(tmp_path):
    root = make_dataset(tmp_path / "ds", nan=("measure", 31))
    test = ShardedDataset(root, split="test", batch_size=8, exact=True, shuffle=False,
                          preprocess=Preprocess(input="measure", target="coe", noise_fixed=True))
    with pytest.raises(DataError, match=r"shard-00003.h5: dataset 'measure': non-finite value \(NaN or inf\) in "
                                        r"sample 31 of split 'test' of "):
        list(test)


def test_data_sets_written_before_still_read_with_the_checks():
    root = REPO / "tests" / "fixtures" / "checkpoint-v1" / "data"
    ds = ShardedDataset(root, batch_size=16, exact=True, preprocess=Preprocess(input="measure", target="coe"))
    assert sorted(int(i) for b in ds for i in b["index"]) == list(range(ds.manifest.num_samples))
    assert ds._passed[:, 0].tolist() == [1] * len(ds.manifest.shards)


# --- 11. shard paths stay inside the data-set folder ------------------------------------------------------

@pytest.mark.parametrize("entry", ["../other/shard-00001.h5", "ABSOLUTE", "sub/../../other/shard-00001.h5"])
def test_shard_paths_are_confined_to_the_data_set(tmp_path, capsys, entry):
    root = make_dataset(tmp_path / "ds")
    make_dataset(tmp_path / "other", seed=5)
    entry = str(tmp_path / "other" / "shard-00001.h5") if entry == "ABSOLUTE" else entry
    raw = json.loads((root / "manifest.json").read_text())
    raw["shards"][1]["file"] = entry
    raw["shards"][1]["sha256"] = read_manifest(tmp_path / "other").shards[1]["sha256"]
    (root / "manifest.json").write_text(json.dumps(raw))
    expected = f"{root / 'manifest.json'}: shard entry 1 names {entry!r}, which is not inside the data-set folder"
    with pytest.raises(DataError) as info:
        ShardedDataset(root, batch_size=4)
    assert str(info.value).startswith(expected) and one_line(str(info.value))
    rc, _, err = cli(capsys, "verify", root, "--quiet")
    assert rc == 2 and one_line(err) and expected in err
    with pytest.raises(DataError, match="shard entry 0 names '../x.h5'"):
        write_manifest(tmp_path / "new", [{"file": "../x.h5", "first_index": 0, "num_samples": 1, "sha256": "0"}],
                       provenance={"tool": "test"})


# --- 7. a full disk: one line naming the file, no segfault, the previous files intact ---------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 200 KiB tmpfs at tmp_path/disk and a function that resizes it (root only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)

    try:
        yield disk, resize
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def fill(disk: pathlib.Path) -> None:
    """Use up every free block of `disk`."""
    with open(disk / "filler", "wb", buffering=0) as fh:
        for block in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    fh.write(bytes(block))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


def tiny_config(tmp_path) -> pathlib.Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "samples": 60, "samples_per_shard": 10}))
    return path


def no_crash(result) -> None:
    assert result.returncode not in (139, -11) and "Traceback" not in result.stderr \
        and "Segmentation" not in result.stderr, result.stderr


LIMITED = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
           "resource.setrlimit(resource.RLIMIT_FSIZE, (30000, resource.RLIM_INFINITY)); "
           "from bcrdist.cli import main; raise SystemExit(main(sys.argv[1:]))")


@pytest.mark.parametrize("command", ["generate", "merge"])
def test_a_failed_hdf5_write_is_one_line_for_any_user(tmp_path, capsys, command):
    """A file-size limit (RLIMIT_FSIZE, no root needed) fails HDF5's writes with EFBIG as a full disk does
    with ENOSPC: h5py's own driver then ended in a segmentation fault."""
    if command == "generate":
        args, target = ["generate", "--config", tiny_config(tmp_path), "--out", tmp_path / "out", "--quiet"], \
            tmp_path / "out" / "shard-00000.h5"
    else:
        src = make_fan_file(tmp_path / "src.h5", 60)
        assert cli(capsys, "shard", src, tmp_path / "ds", "--samples-per-shard", 30, "--quiet")[0] == 0
        (tmp_path / "out").mkdir()
        args, target = ["merge", tmp_path / "ds", tmp_path / "out" / "back.h5"], tmp_path / "out" / "back.h5"
    result = subprocess.run([sys.executable, "-c", LIMITED, *map(str, args)], env=ENV, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    no_crash(result)
    assert result.returncode == 2 and one_line(result.stderr), result.stderr
    assert f"{target}: cannot write: File too large" in result.stderr
    assert not list((tmp_path / "out").iterdir())       # no temporary left, nothing that looks complete


def test_generate_on_a_full_disk(tmp_path, small_disk):
    disk, resize = small_disk
    cfg = tiny_config(tmp_path)
    generate(load_config(cfg, GenerationConfig), tmp_path / "ref", progress=False)
    result = bcrdist("generate", "--config", cfg, "--out", disk / "data", "--quiet")
    no_crash(result)      # was ~70 lines of h5py tracebacks, then a segmentation fault (exit 139)
    assert result.returncode == 2 and one_line(result.stderr), result.stderr
    assert "/shard-0000" in result.stderr and ".h5: cannot write: No space left on device" in result.stderr
    kept = snapshot(disk / "data")
    assert kept and not [name for name in kept if name.startswith(".") or name == "manifest.json"]
    ref = snapshot(tmp_path / "ref")
    assert all(ref[name] == digest for name, digest in kept.items())     # complete shards, as a full run's
    resize("4m")
    generate(load_config(cfg, GenerationConfig), disk / "data", progress=False)
    assert snapshot(disk / "data") == ref                                 # resumed, nothing rewritten


@pytest.mark.mpi
def test_generate_on_a_full_disk_under_mpi(tmp_path, small_disk):
    if not pathlib.Path(sys.executable).with_name("mpiexec").exists():
        pytest.skip("no mpiexec next to the Python interpreter")
    disk, _ = small_disk
    result = bcrdist("generate", "--config", tiny_config(tmp_path), "--out", disk / "data", "--quiet", mpi=2)
    no_crash(result)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and 1 <= len(lines) <= 2, result.stderr          # one line per rank
    assert all(line.startswith("bcrdist generate: error: ") and "No space left on device" in line for line in lines)


def test_shard_on_a_full_disk(tmp_path, small_disk):
    disk, resize = small_disk
    src = make_fan_file(tmp_path / "src.h5", 60, ns=32, nd=32, measure2=False)
    result = bcrdist("shard", src, disk / "ds", "--samples-per-shard", 10, "--quiet")
    no_crash(result)
    assert result.returncode == 2 and one_line(result.stderr), result.stderr
    assert f"{disk / 'ds'}/shard-0000" in result.stderr and "No space left on device" in result.stderr
    kept = snapshot(disk / "ds")
    assert not [name for name in kept if name.startswith(".") or name == "manifest.json"]
    resize("4m")
    assert bcrdist("shard", src, disk / "ds", "--samples-per-shard", 10, "--quiet").returncode == 0
    assert {name: snapshot(disk / "ds")[name] for name in kept} == kept
    assert bcrdist("verify", disk / "ds", "--quiet").returncode == 0


def test_split_stats_and_merge_on_a_full_disk(tmp_path, small_disk, capsys):
    disk, resize = small_disk
    resize("2m")
    ds = make_dataset(disk / "ds")
    update_manifest(ds, statistics=None)
    merge_dataset(ds, disk / "back.h5", layout="samples")
    before = snapshot(disk)
    fill(disk)
    for args, target in ((["split", ds, "--percent", "0.75", "--overwrite"], ds / "splits"),
                         (["stats", ds], ds / "manifest.json")):
        rc, _, err = cli(capsys, *args)
        assert rc == 2 and one_line(err) and str(target) in err and "No space left on device" in err, err
    # HDF5 writes the merged file: in a process of its own, where a crash would show
    result = bcrdist("merge", ds, disk / "back.h5", "--layout", "samples", "--overwrite")
    no_crash(result)
    assert result.returncode == 2 and one_line(result.stderr), result.stderr
    assert f"{disk / 'back.h5'}: cannot write: No space left on device" in result.stderr
    assert {k: v for k, v in snapshot(disk).items() if k != "filler"} == before
