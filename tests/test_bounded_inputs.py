"""Issue 21, items 2–7: inputs whose cost is bounded before it is paid, and one line for every refusal.

Each attack of the issue is reproduced and its new behaviour asserted: exit status 2 (a user error), one
line on stderr naming the file and the key, and where files could suffer, their hashes before and after.
The alias bomb and the huge split range run the CLI in a process whose address space is limited (RLIMIT_AS):
a plain `bcrdist train` start (torch included) peaks near 1 GiB of address space, the attacks asked for
3.65 GiB and 2.24 GiB. A full disk during a checkpoint write is a file-size limit (RLIMIT_FSIZE, no root
needed), which fails the write with EFBIG as a full disk does with ENOSPC.
"""

from __future__ import annotations

import hashlib
import json
import re
import resource
import shutil
import signal
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from bcrdist.data.format import read_manifest, write_manifest, write_shard
from bcrdist.data.splits import load_split, write_splits
from bcrdist.data.stats import store_statistics
from bcrdist.data.synthetic import make_farfield_file
from bcrdist.errors import DataError, shown
from data_helpers import cli
from train_helpers import ROOT, clean_env, make_dataset, write_config

ADDRESS_SPACE = 2 << 30         # a `bcrdist train` start needs about 1 GiB of it
ONE_LEVEL = "[" + ", ".join(["*{}"] * 9) + "]"


def alias_bomb(levels: int = 9) -> str:
    """A YAML flow list of `levels` nested aliases, 9 items each: a few hundred bytes, 9**levels strings."""
    names = "abcdefghijklmnopqrstuvwxyz"
    items = ["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"&{names[i]} " + ONE_LEVEL.format(*[names[i - 1]] * 9) for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def limited(args: list[str], *, address_space: int | None = None, file_size: int | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    """`bcrdist ARGS` in a child process with its address space and/or file sizes limited."""
    def limit() -> None:
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        if file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # EFBIG instead of a killed process
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, resource.RLIM_INFINITY))

    return subprocess.run([sys.executable, "-m", "bcrdist", *map(str, args)], cwd=ROOT, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout, preexec_fn=limit)


def one_error_line(result: subprocess.CompletedProcess | str, *expected: str) -> str:
    """The single stderr line of a refusal (status 2), which must hold every `expected` text."""
    err = result if isinstance(result, str) else result.stderr
    lines = err.strip().splitlines()
    if not isinstance(result, str):
        assert result.returncode == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(text in lines[0] for text in expected), err
    return lines[0]


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 2. a YAML alias bomb: every message bounds the value it shows ---------------------------------------

def test_shown_bounds_what_it_builds():
    bomb = yaml.safe_load(f"x: {alias_bomb()}")["x"]           # 9**9 items once expanded, a few KB here
    assert len(shown(bomb)) <= 200 and shown(bomb).startswith("[['lol', 'lol'")
    assert shown("x" * 10**6, limit=50).count("x") < 50
    assert shown(10**5000) == "<an integer of 5001 digits>"
    looped = []
    looped.append(looped)
    assert shown(looped) == "[[[[...]]]]"
    assert shown("a\tb") == "'a\\tb'" and shown("id", quotes=False) == "id"


@pytest.mark.parametrize("key", ["seed", "model.options"])
def test_an_alias_bomb_is_one_line_in_bounded_memory(tmp_path, key):
    """Was 3.65 GB and 102 s before a MemoryError: the message `got {value!r}` expanded the aliases (and
    `model.options`, whose values are not typed, took them in whole)."""
    config = tmp_path / "bomb.yaml"
    section, _, leaf = key.rpartition(".")
    config.write_text(f"{section}: {{{leaf}: {{a: {alias_bomb()}}}}}\n" if section else
                      f"{leaf}: {alias_bomb()}\n")
    assert config.stat().st_size < 1024
    result = limited(["train", "--config", config, "--print", "all"], address_space=ADDRESS_SPACE, timeout=20)
    line = one_error_line(result, f"{config}: {key}: ")
    assert len(line) < 600


def test_untyped_values_are_bounded_and_ordinary_ones_pass(tmp_path, capsys):
    config = tmp_path / "loop.yaml"
    config.write_text("model: {options: &o {a: *o}}\n")        # a mapping that contains itself
    rc, _, err = cli(capsys, "train", "--config", config, "--print", "all")
    assert rc == 2 and one_error_line(err, f"{config}: model.options: more than 100,000 values")
    config.write_text("model: {options: {width: [1, 2]}}\n")
    rc, out, _ = cli(capsys, "train", "--config", config, "--print", "model.options")
    assert rc == 0 and "width" in out


def test_unreadable_yaml_names_the_file(tmp_path, capsys):
    config = tmp_path / "deep.yaml"
    for text, reason in (("seed: " + "[" * 20000 + "]" * 20000, "nested too deeply"),
                         ("seed: " + "1" * 5000, "Exceeds the limit")):
        config.write_text(text + "\n")
        rc, _, err = cli(capsys, "train", "--config", config, "--print", "seed")
        assert rc == 2 and one_error_line(err, f"{config}: unreadable YAML: {reason}")


# --- 3. a split file with a huge range: checked against the data set before any allocation --------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small data set, its training config and a run of 2 steps (last.pt, best.pt) to resume from."""
    root = tmp_path_factory.mktemp("bounded")
    data = make_dataset(root / "ds", n=96, per_shard=16, val=8)
    config = write_config(root / "cfg.yaml", data, root / "run", data={"path": str(data), "n_valid": 8},
                          schedule={"max_steps": 2}, checkpoint={"every_steps": 1})
    result = limited(["train", "--config", config], timeout=240)
    assert result.returncode == 0, result.stderr
    return root, data, config, root / "run"


def test_a_huge_split_range_is_refused_before_it_is_allocated(tmp_path, trained):
    """A range of 3e8 samples tried 2.24 GiB for its index array before its bounds were checked."""
    _, data, _, _ = trained
    ds = tmp_path / "ds"
    ds.mkdir()
    for p in data.rglob("*"):
        if p.is_file():
            (ds / p.relative_to(data)).parent.mkdir(exist_ok=True)
            (ds / p.relative_to(data)).write_bytes(p.read_bytes())
    split = ds / "splits" / "train.json"
    doc = json.loads(split.read_text())
    split.write_text(json.dumps({**doc, "ranges": [[0, 300_000_000]], "num_samples": 300_000_000}))
    config = write_config(tmp_path / "cfg.yaml", ds, tmp_path / "run", data={"path": str(ds), "n_valid": 8})
    result = limited(["train", "--config", config], address_space=ADDRESS_SPACE, timeout=20)
    one_error_line(result, f"{split}: malformed split (range [0, 300000000) lies outside the data set's "
                           f"samples [0, 96))")
    assert not (tmp_path / "run").exists()                     # refused by the run plan, before the claim
    manifest = read_manifest(ds)
    tracemalloc.start()
    for ranges in ([[0, 300_000_000]], [[-5, 3]], [[10, 20], [0, 5]], [[0, 2.5]], [[0, 10**30]]):
        split.write_text(json.dumps({**doc, "ranges": ranges}))
        with pytest.raises(DataError, match="malformed split"):
            load_split(manifest, split)
    assert tracemalloc.get_traced_memory()[1] < 1 << 20
    tracemalloc.stop()
    split.write_text(json.dumps({**doc, "num_samples": "64"}))
    with pytest.raises(DataError, match="num_samples must be an integer, got '64'"):
        load_split(manifest, split)


# --- 4. a full disk while a resumed run writes its checkpoint -------------------------------------------

def test_a_failed_checkpoint_write_on_resume_is_one_line(trained):
    """torch's zip writer turned the write's EFBIG/ENOSPC into RuntimeError "unexpected pos": 54 lines."""
    _, _, config, run = trained
    before = digests(run / "checkpoints")
    result = limited(["train", "--config", config, "--resume", "auto", "--set", "schedule.max_steps=4"],
                     file_size=8000, timeout=240)
    line = one_error_line(result)
    assert re.search(rf"{re.escape(str(run / 'checkpoints'))}/(last|best)\.pt: cannot write: File too large$", line)
    assert digests(run / "checkpoints") == before                # the previous files intact, no temporaries


# --- 5. weights of another size: one line naming both shapes --------------------------------------------

def test_initial_weights_of_another_size_are_one_line(tmp_path, trained):
    _, _, config, run = trained
    best = run / "checkpoints" / "best.pt"
    result = limited(["train", "--config", config, "--set", f"run_dir={tmp_path / 'fine'}", "--set",
                      "model.alpha=4", "--set", "schedule.initial_batch_size=8", "--set",
                      f"schedule.initial_weights={best}"], timeout=240)
    one_error_line(result, f"schedule.initial_weights: {best}: the weights do not fit the model: ",
                   "is [3, 8, 1] in the checkpoint, [4, 8, 1] in the model")


def tree(folder: Path) -> tuple[list[str], dict[str, str]] | None:
    """Every path under `folder` (empty folders too) and every file's digest; None when it does not exist."""
    return (sorted(str(p.relative_to(folder)) for p in folder.rglob("*")), digests(folder)) if folder.exists() else None


@pytest.mark.parametrize("case", ["no train split", "no validation split", "initial weights not found",
                                  "initial weights not a checkpoint", "initial weights of another size"])
def test_late_refusals_come_before_the_run_directory_is_claimed(tmp_path, capsys, trained, case):
    """Issue 21: a missing split file and refused schedule.initial_weights were reported after the run
    directory was claimed (train.lock, train.log written). Now the plan refuses them: one line, status 2, a
    run directory that did not exist still does not, one that did is unchanged (no lock, no log)."""
    _, data, config, run = trained
    ds, sets = tmp_path / "ds", []
    shutil.copytree(data, ds)
    if case == "no train split":
        (ds / "splits" / "train.json").unlink()
        expected = f"{ds / 'splits' / 'train.json'}: training split not found; make splits with"
    elif case == "no validation split":
        (ds / "splits" / "val.json").unlink()
        expected = f"{ds / 'splits' / 'val.json'}: validation split not found; make one with"
    else:
        weights = {"initial weights not found": tmp_path / "absent.pt",
                   "initial weights not a checkpoint": tmp_path / "notes.pt",
                   "initial weights of another size": run / "checkpoints" / "best.pt"}[case]
        (tmp_path / "notes.pt").write_text("not a checkpoint\n")
        sets = ["schedule.initial_batch_size=8", f"schedule.initial_weights={weights}"]
        sets += ["model.alpha=4"] if case.endswith("another size") else []
        expected = {"initial weights not found": f"schedule.initial_weights: {weights}: checkpoint not found",
                    "initial weights not a checkpoint": f"{weights}: not a readable bcrdist checkpoint",
                    "initial weights of another size": f"schedule.initial_weights: {weights}: the weights do not fit "
                                                       f"the model: "}[case]
    args = ["train", "--config", config, "--set", f"data.path={ds}", *[a for s in sets for a in ("--set", s)]]
    new, old = tmp_path / "new-run", tmp_path / "old-run"
    rc, _, err = cli(capsys, *args, "--set", f"run_dir={new}")
    assert rc == 2 and one_error_line(err, expected) and not new.exists()
    (old / "notes").mkdir(parents=True)
    (old / "notes" / "kept.txt").write_text("the owner's file\n")
    before = tree(old)
    rc, _, err = cli(capsys, *args, "--set", f"run_dir={old}", "--resume", "auto")
    assert rc == 2 and one_error_line(err, expected) and tree(old) == before
    if case == "no train split":        # under torchrun: rank 0 plans before it claims, every rank stops
        result = limited([*args, "--nproc", 2, "--set", f"run_dir={new}"], timeout=240)
        lines = set(result.stderr.strip().splitlines())          # each rank's own line: rank 0's decision
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(lines) == 1 and expected in lines.pop(), result.stderr
        assert not new.exists()


def test_a_resume_on_data_of_another_size_is_one_line(tmp_path, trained):
    _, _, config, run = trained
    other = make_dataset(tmp_path / "wider", n=96, per_shard=16, val=8, nd=10)
    before = digests(run / "checkpoints")
    result = limited(["train", "--config", config, "--resume", "auto", "--set", f"data.path={other}", "--set",
                      "schedule.max_steps=4"], timeout=240)
    one_error_line(result, f"{run / 'checkpoints' / 'last.pt'}: the weights do not fit the model: ",
                   "is [8] in the checkpoint, [10] in the model", "(data.path)")
    assert digests(run / "checkpoints") == before


# --- 6. values that were accepted and failed later ------------------------------------------------------

@pytest.mark.parametrize("override", ["data.noise=1e30", "data.noise_max=1e300", "data.eval_noise=1001"])
def test_noise_levels_are_bounded(capsys, override):
    rc, _, err = cli(capsys, "train", "--set", override, "--print", "data")
    assert rc == 2 and one_error_line(err, f"--set {override}: {override.split('=')[0]}: must lie in [0, 1000]")


@pytest.mark.parametrize("part", ["farfield.real", "farfield.imag"])
def test_a_complex_dataset_named_as_a_real_part_is_refused(tmp_path, capsys, part):
    src = make_farfield_file(tmp_path / "src.h5", 20, imag=True)
    with h5py.File(src, "a") as fh:
        values = fh[part][()]
        del fh[part]
        fh[part] = (values + 1j * values).astype("c8")
    before = digests(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # was a ComplexWarning, the imaginary parts lost
        rc, _, err = cli(capsys, "shard", src, tmp_path / "ds", "--samples-per-shard", 10)
    assert rc == 2 and one_error_line(err, f"{src}: dataset '{part}' holds complex numbers")
    assert digests(tmp_path) == before and not (tmp_path / "ds").exists()


@pytest.mark.parametrize("command", ["train", "submit"])
@pytest.mark.parametrize("name", ["runs/a\tb", "runs/a\nb", "runs/a\x7fb", "runs/a\x85b"])
def test_a_control_character_in_run_dir_is_refused(tmp_path, capsys, command, name):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / name)}))
    rc, _, err = cli(capsys, command, "--config", config)
    assert rc == 2 and one_error_line(err, f"{config}: run_dir: ", f"contains the control character {name[6]!r}")
    assert list(tmp_path.iterdir()) == [config]


# --- 7. every split the run reads is checked before the first step --------------------------------------

def dataset_with(out: Path, nan_sample: int | None = None) -> Path:
    """make_dataset's layout (96 samples in shards of 16: training 0–63, validation 64–71, test 72–95, so
    shard 5 holds test samples only), with a NaN in the target of `nan_sample`."""
    rng = np.random.default_rng(0)
    infos = []
    for shard, first in enumerate(range(0, 96, 16)):
        coe = np.abs(rng.standard_normal((16, 16, 6))).astype(np.float32)
        measure = rng.standard_normal((16, 16, 8)).astype(np.float32)
        if nan_sample is not None and first <= nan_sample < first + 16:
            coe[nan_sample - first, 0, 0] = np.nan
        infos.append(write_shard(out, shard, first, {"measure": measure, "measure_imag": 0.5 * measure,
                                                    "coe": coe}))
    write_manifest(out, infos, provenance={"tool": "tests/test_bounded_inputs.py"})
    store_statistics(out)
    write_splits(out, 0.75, val=8)
    return out


@pytest.mark.parametrize("fault", ["truncated", "nan"])
def test_a_bad_test_split_stops_the_run_before_step_1(tmp_path, fault):
    """A truncated shard or a NaN in the test split was found only after the whole training."""
    data = dataset_with(tmp_path / "ds", nan_sample=90 if fault == "nan" else None)
    shard = data / "shard-00005.h5"
    if fault == "truncated":
        shard.write_bytes(shard.read_bytes()[:-100])
    config = write_config(tmp_path / "cfg.yaml", data, tmp_path / "run",
                          data={"path": str(data), "n_valid": 8})
    result = limited(["train", "--config", config], timeout=240)
    expected = "bytes, the manifest says" if fault == "truncated" else \
        "dataset 'coe': non-finite value (NaN or inf) in sample 90 of split 'test'"
    one_error_line(result, f"{shard}: ", expected)
    log = tmp_path / "run" / "train.log"
    assert "epoch 1" not in (log.read_text() if log.exists() else "") and not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
