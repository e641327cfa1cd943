"""Experiment trackers (bcrdist.train.run_log): TensorBoard's per-step loss, final metrics and hyperparameters
read back with TensorBoard's own reader, and Weights & Biases offline runs that a resumed training continues
and a restart replaces, from real `bcrdist train` processes."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bcrdist.config import load_config
from bcrdist.errors import ConfigError
from bcrdist.train.config import TrainConfig
from bcrdist.train.run_log import WANDB_RECORD, RunLogger, TrackerError, final_scalars, flat_hparams
from train_helpers import ROOT, bcrdist, clean_env, make_dataset, planned_trainer, write_config

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="the tensorboard extra is not installed")
needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="the wandb extra is not installed")

# two short stages (one per phase): 36 optimizer steps over 4 epochs of 78 training samples
SCHEDULE = {"pretrain_stages": [[1, 1.0]], "finetune_stages": [[1, 1.0]]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", n=120, per_shard=40, val=12)


@pytest.fixture
def wandb_home(tmp_path, monkeypatch) -> None:
    """W&B's own settings, cache and data folders in the test's directory, not the user's home."""
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)


def config(tmp_path: Path, data: Path, run_dir: Path, **logging) -> Path:
    return write_config(tmp_path / "c.yaml", data, run_dir, data={"path": str(data), "n_valid": 12},
                        schedule=SCHEDULE, runtime={"compile": "false", "threads": 1, "log_every_steps": 1},
                        logging=logging)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ------------------------------------------------------------------ TensorBoard
@needs_tensorboard
def test_tensorboard_gets_step_losses_epoch_records_final_metrics_and_hparams(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    run_dir = tmp_path / "run"
    results = planned_trainer(load_config(config(tmp_path, data, run_dir, tensorboard=True), TrainConfig)).run()
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

    # the progress lines of every epoch count against that epoch's steps (a later epoch once showed 'N/0 steps')
    progress = re.findall(r"epoch (\d+): (\d+)/(\d+) steps", (run_dir / "train.log").read_text())
    assert len({epoch for epoch, _, _ in progress}) > 2
    assert all(0 < int(done) <= int(total) for _, done, total in progress), progress

    steps = results["steps"]
    assert steps == 36 and [s for s, _ in scalars["train/loss_step"]] == list(range(1, steps + 1))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in scalars["val_error"]] == [r["step"] for r in records]
    assert [v for _, v in scalars["val_error"]] == pytest.approx([r["val_error"] for r in records])

    final = final_scalars(results["errors"])
    assert {"test/rel_l2_mean", "test/weighted_max", "test/psnr_min", "val/rel_l2_mean"} <= set(final)
    assert not any(tag.endswith(("_count", "_pixel_max")) for tag in final)
    for tag, value in final.items():
        assert scalars[tag] == [(steps, pytest.approx(value))], tag
    assert final["test/rel_l2_mean"] == results["errors"]["test"]["rel_l2"]["mean"]

    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG]).hparams
    assert start["model.type"].string_value == "bcrnet" and start["seed"].number_value == 0
    assert start["schedule.batch_size"].number_value == 8 and start["optim.lr"].number_value == 1e-3
    assert "schedule.pretrain_stages" not in start and "data.antipodal" not in start   # lists and nulls
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    assert {m.name.tag for m in experiment.metric_infos} == set(final)


def test_hyperparameters_are_the_configs_scalar_keys_under_dotted_names():
    flat = flat_hparams({"seed": 3, "model": {"type": "bcrnet", "alpha": 4, "pad_to": None, "options": {}},
                         "schedule": {"pretrain_stages": [[1, 1.0]], "pretrain": True}, "optim": {"lr": 0.5}})
    assert flat == {"seed": 3, "model.type": "bcrnet", "model.alpha": 4, "schedule.pretrain": True, "optim.lr": 0.5}


# ------------------------------------------------------------------ Weights & Biases
def offline_runs(run_dir: Path) -> list[str]:
    """The run ids of RUN/wandb/offline-run-DATE_TIME-ID/, in the order they were made."""
    return [p.name.rsplit("-", 1)[1] for p in sorted((run_dir / "wandb").glob("offline-run-*"))]


def no_network() -> list[str]:
    """A command prefix that runs a process without any network (a new network namespace), where the system
    allows one; else none."""
    try:
        ok = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return ["unshare", "-rn"] if ok else []


@needs_wandb
def test_wandb_offline_runs_are_continued_on_resume_and_replaced_on_restart(data, tmp_path, wandb_home):
    run_dir = tmp_path / "run"
    cfg = config(tmp_path, data, run_dir, wandb="offline", wandb_project="trackers-test")
    # offline never touches the network: the first training runs where there is none
    t0 = time.time()
    first = subprocess.run([*no_network(), sys.executable, "-m", "bcrdist", "train", "--config", str(cfg),
                            "--set", "schedule.max_steps=5"], cwd=ROOT, env=clean_env(), capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert time.time() - t0 < 60                      # W&B's service does not hold the finished process
    assert "wandb:" not in first.stdout + first.stderr          # W&B's console lines: it stays silent
    record = json.loads((run_dir / WANDB_RECORD).read_text())
    run_id = record["id"]
    assert record == {"id": run_id, "project": "trackers-test", "entity": None, "mode": "offline"}
    assert offline_runs(run_dir) == [run_id]
    (stream,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    logged = stream.read_bytes()
    assert logged.count(b"train/loss_step") >= 5 and b"val_error" in logged and b"test/rel_l2_mean" in logged

    # the stopped run continues (a requeue does the same): the same W&B run, in a new offline segment
    bcrdist("train", "--config", str(cfg), "--resume", "auto", "--set", "schedule.max_steps=12", timeout=120)
    assert json.loads((run_dir / WANDB_RECORD).read_text())["id"] == run_id
    assert offline_runs(run_dir) == [run_id, run_id]

    # --restart moves the run aside: a new run, a new W&B run
    bcrdist("train", "--config", str(cfg), "--restart", "--set", "schedule.max_steps=3", timeout=120)
    new_id = json.loads((run_dir / WANDB_RECORD).read_text())["id"]
    assert new_id != run_id and offline_runs(run_dir) == [new_id]
    (old,) = tmp_path.glob("run.old-*")
    assert json.loads((old / WANDB_RECORD).read_text())["id"] == run_id


@needs_wandb
def test_a_wandb_run_that_cannot_start_is_one_line(tmp_path, monkeypatch, wandb_home):
    import wandb

    def refuse(**kwargs):
        raise wandb.errors.UsageError("No API key configured.\nUse `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", refuse)
    log = RunLogger(tmp_path, enabled=True, wandb="online")
    with pytest.raises(TrackerError, match=r"^logging.wandb: online: W&B could not start the run of .*: No API key "
                                           r"configured. Use `wandb login` to log in.$"):
        log.start()
    (tmp_path / WANDB_RECORD).write_text("{not json")
    with pytest.raises(TrackerError, match=rf"{WANDB_RECORD}: not a readable W&B run record .*remove it"):
        RunLogger(tmp_path, enabled=True, wandb="offline").start()


@needs_wandb
def test_the_wandb_record_replaces_a_symlink_instead_of_writing_through_it(tmp_path, monkeypatch, wandb_home):
    import wandb

    class Run:
        id = "abc123"

        def finish(self, exit_code=0):
            self.exit_code = exit_code

    started = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: started.append(kwargs) or Run())
    outside = tmp_path / "outside.json"
    outside.write_text('{"id": "planted"}')
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / WANDB_RECORD).symlink_to(outside)
    log = RunLogger(run_dir, enabled=True, wandb="offline", config={"seed": 1})
    log.start()
    assert started[0]["id"] == "planted" and started[0]["resume"] == "allow" and started[0]["mode"] == "offline"
    assert started[0]["dir"] == str(run_dir) and started[0]["config"] == {"seed": 1}
    assert outside.read_text() == '{"id": "planted"}'
    assert not (run_dir / WANDB_RECORD).is_symlink()
    assert json.loads((run_dir / WANDB_RECORD).read_text())["id"] == "abc123"
    run = log._wandb_run
    log.close(failed=True)
    assert run.exit_code == 1


# ------------------------------------------------------------------ bad input
def test_an_unknown_wandb_mode_is_one_line(data, tmp_path):
    r = bcrdist("train", "--config", str(config(tmp_path, data, tmp_path / "run")), "--set", "logging.wandb=maybe",
                check=False, timeout=120)
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert "logging.wandb: expected one of 'off', 'offline', 'online', got 'maybe'" in line


def test_wandb_off_reads_as_off_although_yaml_makes_it_false():
    assert load_config(None, TrainConfig, ["logging.wandb=off"]).logging.wandb == "off"
    with pytest.raises(ConfigError, match="logging.wandb: expected one of"):
        load_config(None, TrainConfig, ["logging.wandb=on"])


def test_wandb_without_the_package_is_one_line_before_training(data, tmp_path):
    blocker = tmp_path / "site"
    blocker.mkdir()
    # how Python marks a module as unavailable, set before bcrdist starts
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['wandb'] = None\n")
    run_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "bcrdist", "train", "--config",
                        str(config(tmp_path, data, run_dir, wandb="offline"))], cwd=ROOT,
                       env={**clean_env(), "PYTHONPATH": str(blocker)}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert one_line(r.stderr) == ("bcrdist train: error: logging.wandb: offline needs the wandb package: "
                                  "pip install 'bcrdist[wandb]'")
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "wandb").exists()
