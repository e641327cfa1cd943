"""Nothing bcrdist writes follows a symbolic link planted in a run or data folder (issue 21), and a resume at an
epoch boundary logs every step once.

Two kinds of file, two outcomes. Files written in place (the run's lock, train.log, metrics.jsonl, metrics.csv,
the results table, a synthetic HDF5 file) refuse a link with one line naming it, exit non-zero, and leave its
target byte-identical. Files written atomically (a temporary renamed over the final name: config.yaml,
results.json, checkpoints, shards and their side files, the manifest, split files, merged files, plots) create
their temporary anew, so a link planted under the temporary's name is removed, not followed; a link at the final
name is replaced by the rename itself, its target untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bcrdist.cli.main import main as cli_main
from bcrdist.config import load_config
from bcrdist.data.format import read_manifest
from bcrdist.data.synthetic import make_fan_file
from bcrdist.fileio import NOT_FOLLOWED, NOT_REGULAR, NotFollowedError, open_nofollow, temp_path
from bcrdist.train import plots
from bcrdist.train.config import TrainConfig
from bcrdist.train.run_log import LOG_NAMES, RunLogger
from bcrdist.train.trainer import RunWriteError
from generation_helpers import TINY
from generation_helpers import write_config as write_generation_config
from train_helpers import bcrdist, make_dataset, planned_trainer, write_config

SHORT = {"pretrain_stages": [[3, 1.0]], "finetune": False, "patience": 10, "rel_threshold": 1e-3}
PRECIOUS = b"a file outside every run and data folder\n"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def victim(folder: Path, name: str = "victim") -> Path:
    """A file outside the folders bcrdist writes, for a planted link to point at."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(PRECIOUS)
    return path


def plant(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def untouched(target: Path) -> bool:
    """`target` is still byte for byte the victim `victim` wrote."""
    return sha(target) == hashlib.sha256(PRECIOUS).hexdigest()


def regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", n=120, per_shard=40, val=12)


def config(tmp: Path, data: Path, **sections) -> Path:
    return write_config(tmp / "c.yaml", data, tmp / "run", **{"schedule": SHORT, **sections},
                        data={"path": str(data), "n_valid": 12})


# ------------------------------------------------------------------ the helper


def test_open_nofollow_refuses_a_link_in_every_mode_and_removes_one_at_a_new_temporary(tmp_path):
    target = victim(tmp_path / "outside")
    link = plant(tmp_path / "f", target)
    for mode in ("append", "update", "truncate"):
        with pytest.raises(NotFollowedError) as info:
            open_nofollow(link, mode)
        assert str(info.value) == f"{link}: {NOT_FOLLOWED}"
    fd = open_nofollow(link, "new")
    os.write(fd, b"new")
    os.close(fd)
    assert untouched(target) and regular(link) and link.read_bytes() == b"new"


def test_open_nofollow_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for mode in ("append", "update", "truncate"):
        with pytest.raises(NotFollowedError) as info:
            open_nofollow(fifo, mode)
        assert str(info.value) == f"{fifo}: {NOT_REGULAR}"


# ------------------------------------------------------------------ a training run's files


@pytest.mark.parametrize("name", ["train.lock", *LOG_NAMES])
def test_a_link_at_a_file_the_run_writes_in_place_refuses_the_training(data, tmp_path, name):
    """train.lock is opened, and the logs are checked, before anything is written: one line, nothing lost."""
    target = victim(tmp_path / "outside")
    before = sha(target)
    run = tmp_path / "run"
    link = plant(run / name, target)
    out = bcrdist("train", "--config", str(config(tmp_path, data)), check=False)
    assert out.returncode != 0
    assert out.stderr.splitlines() == [f"bcrdist train: error: {link}: {NOT_FOLLOWED}; remove it, or train into "
                                       f"another run_dir"]
    assert sha(target) == before and link.is_symlink()
    assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()


@pytest.mark.parametrize("name", LOG_NAMES)
def test_a_log_replaced_by_a_link_during_the_run_is_not_appended_through(tmp_path, name):
    """The check before training has a twin at every append (a link planted while the run goes on)."""
    target = victim(tmp_path / "outside")
    log = RunLogger(tmp_path / "run", enabled=True)
    link = plant(tmp_path / "run" / name, target)
    record = {"phase": "pretrain", "stage": 0, "epoch": 1, "step": 3, "train_loss": 1.0, "val_error": 1.0,
              "val_error_aux": 1.0, "best_error": 1.0, "improved": True, "lr": 1e-3, "samples_per_s": 1.0,
              "data_wait_share": 0.0}
    with pytest.raises(OSError) as info:
        log.info("a line") if name == "train.log" else log.metrics(record)
    assert info.value.strerror == f"{link}: cannot write: {NOT_FOLLOWED}"
    assert untouched(target)


@pytest.fixture(scope="module")
def planted_run(data, tmp_path_factory):
    """A run with links planted at the temporaries of config.yaml, results.json and both checkpoints (after the
    trainer removed stale ones) and at its results table: (run, {name: target}, the run's error)."""
    tmp = tmp_path_factory.mktemp("planted")
    run = tmp / "run"
    trainer = planned_trainer(load_config(config(tmp, data, results_table="table.tsv"), TrainConfig))
    targets = {}
    for final in (run / "config.yaml", run / "results.json", run / "checkpoints" / "last.pt",
                  run / "checkpoints" / "best.pt"):
        targets[final.name] = victim(tmp / "outside", final.name)
        plant(temp_path(final), targets[final.name])
    targets["table.tsv"] = plant(tmp / "table.tsv", victim(tmp / "outside", "table.tsv"))
    with pytest.raises(RunWriteError) as info:
        trainer.run()
    return run, targets, info.value


@pytest.mark.parametrize("name", ["config.yaml", "results.json"])
def test_a_link_at_the_temporary_of_a_run_file_is_replaced_not_followed(planted_run, name):
    run, targets, _ = planted_run
    assert untouched(targets[name])
    assert regular(run / name) and (run / name).read_bytes() != PRECIOUS
    assert not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_a_link_at_a_checkpoint_temporary_is_replaced_not_followed(planted_run, name):
    run, targets, _ = planted_run
    assert untouched(targets[name])
    assert regular(run / "checkpoints" / name) and not list((run / "checkpoints").glob(".*.tmp"))


def test_a_link_at_the_results_table_is_refused_after_the_results_are_written(planted_run):
    run, targets, error = planted_run
    table = targets["table.tsv"]
    assert str(error).splitlines() == [f"{table}: cannot write: {NOT_FOLLOWED}"]
    assert untouched(table.resolve()) and table.is_symlink()
    assert json.loads((run / "results.json").read_text())["steps"] > 0


# ------------------------------------------------------------------ data-set files


def test_generate_creates_its_temporaries_anew(tmp_path, capsys):
    """Shards (their temporaries removed as stale first), their side files and the manifest."""
    out = tmp_path / "gen"
    pid = os.getpid()
    names = ["shard-00000.h5", "shard-00000.h5.json", "manifest.json"]
    targets = {name: victim(tmp_path / "outside", name) for name in names}
    for name in names:
        plant(out / f".{name}.{pid}.tmp", targets[name])
    assert cli_main(["generate", "--config", str(write_generation_config(tmp_path / "tiny.yaml", TINY)),
                     "--out", str(out), "--quiet"]) == 0
    assert all(untouched(t) for t in targets.values())
    assert all(regular(out / name) for name in names) and read_manifest(out).num_samples == TINY["samples"]
    assert not list(out.glob(".*.tmp"))


def test_shard_creates_its_temporaries_anew(tmp_path, capsys):
    src = make_fan_file(tmp_path / "fan.h5", 20)
    out = tmp_path / "ds"
    pid = os.getpid()
    names = ["shard-00000.h5", "shard-00000.h5.json", "manifest.json"]
    targets = {name: victim(tmp_path / "outside", name) for name in names}
    for name in names:
        plant(out / f".{name}.{pid}.tmp", targets[name])
    assert cli_main(["shard", str(src), str(out), "--samples-per-shard", "10"]) == 0
    assert all(untouched(t) for t in targets.values())
    assert read_manifest(out).num_samples == 20 and all(regular(out / name) for name in names)


def test_split_replaces_a_linked_split_file_and_its_temporaries_without_following_them(data, tmp_path, capsys):
    ds = tmp_path / "ds"
    shutil.copytree(data, ds)
    pid = os.getpid()
    temps = {name: victim(tmp_path / "outside", f"tmp-{name}") for name in ("train.json", "test.json")}
    for name, target in temps.items():
        plant(ds / "splits" / f".{name}.{pid}.tmp", target)
    final = victim(tmp_path / "outside", "val.json")
    (ds / "splits" / "val.json").unlink()
    plant(ds / "splits" / "val.json", final)
    assert cli_main(["split", str(ds), "--percent", "0.5", "--val", "6", "--overwrite"]) == 0
    assert all(untouched(t) for t in (*temps.values(), final))
    assert all(regular(ds / "splits" / name) for name in ("train.json", "val.json", "test.json"))


def test_stats_replaces_a_linked_manifest_without_following_it(data, tmp_path, capsys):
    """A manifest that is a link is read through it (reading harms nothing), and replaced by the rename."""
    ds = tmp_path / "ds"
    shutil.copytree(data, ds)
    target = tmp_path / "outside" / "manifest.json"
    target.parent.mkdir()
    (ds / "manifest.json").rename(target)
    plant(ds / "manifest.json", target)
    plant(temp_path(ds / "manifest.json"), victim(tmp_path / "outside"))
    before = sha(target)
    assert cli_main(["stats", str(ds)]) == 0
    assert sha(target) == before and untouched(tmp_path / "outside" / "victim")
    assert regular(ds / "manifest.json") and read_manifest(ds).statistics


def test_merge_creates_its_temporary_anew(data, tmp_path, capsys):
    out = tmp_path / "merged.h5"
    target = victim(tmp_path / "outside")
    plant(temp_path(out), target)
    assert cli_main(["merge", str(data), str(out)]) == 0
    assert untouched(target) and regular(out)


def test_a_synthetic_file_is_not_written_through_a_link(tmp_path):
    target = victim(tmp_path / "outside")
    link = plant(tmp_path / "fan.h5", target)
    with pytest.raises(NotFollowedError, match=f"^{link}: {NOT_FOLLOWED}$"):
        make_fan_file(link, 4)
    assert untouched(target)


def test_a_plot_replaces_a_link_and_its_temporary_without_following_them(tmp_path):
    final, tmp_target = victim(tmp_path / "outside", "final"), victim(tmp_path / "outside", "tmp")
    path = plant(tmp_path / "hist.png", final)
    plant(temp_path(path), tmp_target)
    plots.plot_error_histogram(np.linspace(0.1, 0.2, 20), path)
    assert untouched(final) and untouched(tmp_target)
    assert regular(path) and path.read_bytes().startswith(b"\x89PNG")


# ------------------------------------------------------------------ issue 21, item 9


def test_a_resume_at_an_epoch_boundary_logs_every_step_once(data, tmp_path):
    """Stage 0 (two epochs), then stage 1 (one): max_steps at the end of epoch 1, then at the end of stage 0,
    then the rest. One record per epoch and step, each with its training loss, in metrics.jsonl and metrics.csv
    alike."""
    path = config(tmp_path, data, schedule={**SHORT, "pretrain_stages": [[1, 1.0], [2, 0.5]]})

    def trainer(*overrides):
        return planned_trainer(load_config(path, TrainConfig, list(overrides)))

    planned = trainer()
    assert [(s.start_epoch, s.end_epoch) for s in planned.stages] == [(0, 2), (2, 3)]
    s0, s1 = (planned.data.train_steps(stage.global_batch) for stage in planned.stages)
    trainer(f"schedule.max_steps={s0}").run()
    trainer(f"schedule.max_steps={2 * s0}", "checkpoint.resume=auto").run()
    trainer("schedule.max_steps=1000", "checkpoint.resume=auto").run()
    run = tmp_path / "run"
    expected = [(1, s0), (2, 2 * s0), (3, 2 * s0 + s1)]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in records] == expected
    assert all(r["train_loss"] is not None for r in records)
    rows = (run / "metrics.csv").read_text().splitlines()
    cells = [dict(zip(rows[0].split(","), row.split(","))) for row in rows[1:]]
    assert [(int(c["epoch"]), int(c["step"])) for c in cells] == expected
    assert all(c["train_loss"] for c in cells)


def test_an_early_stop_at_max_steps_still_ends_its_stage_on_resume(data, tmp_path):
    """Stage 0 stops early after epoch 1, where max_steps also lands: the resumed run goes on with stage 1, as
    the run without the limit does, instead of training stage 0 on."""
    path = config(tmp_path, data, schedule={**SHORT, "pretrain_stages": [[1, 1.0], [2, 0.5]], "patience": 1,
                                            "rel_threshold": 0.9})

    def run(*overrides) -> tuple[list, dict]:
        results = planned_trainer(load_config(path, TrainConfig, list(overrides))).run()
        lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        return [(r["epoch"], r["step"]) for r in map(json.loads, lines)], results

    whole, whole_results = run()
    assert whole[0][0] == 1 and whole[1][0] == 3      # stage 0 stopped early after epoch 1
    shutil.rmtree(tmp_path / "run")
    run(f"schedule.max_steps={whole[0][1]}")
    split, split_results = run("checkpoint.resume=auto")
    assert split == whole and split_results["steps"] == whole_results["steps"]
