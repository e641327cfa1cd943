"""Run logging on rank 0: `train.log` (human lines, also printed), `metrics.jsonl` (one JSON object per
evaluation), the same records as `metrics.csv`, the experiment trackers (TensorBoard event files in
`tensorboard/`, a Weights & Biases run in `wandb/`), and per-epoch progress (`bcrdist.progress.Progress`).
Other ranks log nothing. The logs are appended to in place, never through a symbolic link (`open_nofollow`).

The CSV's columns are those of its first record (a resumed run appends rows under the existing header;
keys a later record lacks are empty cells). Both trackers get, at the optimizer step as their step: every
numeric field of a record under its own name, the training loss every `every_steps` steps
(`train/loss_step`), and at the end the best model's final errors as `SPLIT/METRIC_STAT` (`test/rel_l2_mean`),
which TensorBoard files with the run's hyperparameters (the HParams plugin: the config's scalar keys under
dotted names) and W&B keeps in the run's summary. A resumed run starts a new event file that discards, in
TensorBoard's view, the events the interrupted run logged from its first new step on (`purge_step`); it
continues the W&B run whose id `RUN/wandb_run.json` holds.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

from bcrdist.errors import BcrdistError, ConfigError
from bcrdist.fileio import atomic_write_files, one_line, open_nofollow, to_json, write_error
from bcrdist.progress import Progress

# record fields that are positions or flags rather than measurements
_NOT_SCALARS = {"phase", "stage", "epoch", "step", "improved", "wall_time"}
# the W&B run of a run directory (id, project, entity, mode), read by a resumed training
WANDB_RECORD = "wandb_run.json"
# the logs appended to in RUN: train.log, the metrics records, the same as CSV
LOG_NAMES = ("train.log", "metrics.jsonl", "metrics.csv")


class TrackerError(BcrdistError):
    """An experiment tracker could not start or continue the run's record (W&B not logged in, unreachable,
    an unreadable `wandb_run.json`)."""


def _finite_or_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def scalar_fields(record: dict) -> dict:
    """The measurements of an evaluation record: its numeric fields that are not positions or flags."""
    return {k: v for k, v in record.items()
            if k not in _NOT_SCALARS and not isinstance(v, bool) and isinstance(v, (int, float))}


def flat_hparams(config: dict, prefix: str = "") -> dict:
    """A config mapping's scalar keys under dotted names, {"model.type": "bcrnet", "seed": 0, …}: the values a
    hyperparameter table can hold (int, float, str, bool); lists and nulls are left out."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
    return flat


def final_scalars(errors: dict) -> dict:
    """results.json's errors {split: {metric: {mean, std, max or min, count}}} as {"test/rel_l2_mean": …}:
    the statistics of each metric, not its sample count or PSNR's pixel range."""
    return {f"{split}/{metric}_{stat}": float(value) for split, metrics in errors.items()
            for metric, stats in metrics.items() for stat, value in stats.items()
            if stat not in ("count", "pixel_max")}


def recorded_wandb_id(path: Path) -> str | None:
    """The W&B run id a run directory's `wandb_run.json` holds; None when there is none yet."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise TrackerError(f"{path}: not a readable W&B run record ({one_line(exc)}); remove it to start a "
                           f"new W&B run") from None
    run_id = record.get("id") if isinstance(record, dict) else None
    if not isinstance(run_id, str) or not run_id:
        raise TrackerError(f"{path}: holds no W&B run id; remove it to start a new W&B run")
    return run_id


def open_wandb_run(run_dir: Path, mode: str, project: str, entity: str | None, config: dict):
    """`wandb.init` into RUN/wandb/: the run RUN/wandb_run.json names, continued (a resumed or requeued
    training), or a new one whose id that file then records (written atomically, never through a symlink).
    `offline` never touches the network; W&B prints nothing and leaves stdout alone (train.log is the
    console)."""
    import wandb

    record = run_dir / WANDB_RECORD
    run_id = recorded_wandb_id(record)
    try:
        # allow_val_change: a resume may change the keys of run_dir.MAY_CHANGE (run length, logging, …)
        run = wandb.init(id=run_id, resume="allow" if run_id else None, dir=str(run_dir), mode=mode,
                         project=project, entity=entity, name=run_dir.name, config=config, allow_val_change=True,
                         settings=wandb.Settings(silent=True, console="off"))
    except Exception as exc:        # W&B's own errors (not logged in, server unreachable) as one line
        raise TrackerError(f"logging.wandb: {mode}: W&B could not start the run of {run_dir}: "
                           f"{one_line(exc)}") from None
    text = to_json({"id": run.id, "project": project, "entity": entity, "mode": mode}) + "\n"
    try:
        atomic_write_files({record: text.encode()})
    except OSError:
        run.finish(exit_code=1)
        raise
    return run


class RunLogger:
    """`enabled` on rank 0 only; `tensorboard` also writes RUN/tensorboard/, `wandb` (`off`, `offline`,
    `online`) a W&B run of `wandb_project` / `wandb_entity` in RUN/wandb/ (`start()` opens it). Each needs its
    package, checked on every rank so that all ranks fail together, before training. `config`: the resolved
    config (W&B's run config; its scalar keys are the hyperparameters)."""

    def __init__(self, run_dir: Path, enabled: bool, every_steps: int = 0, tensorboard: bool = False,
                 wandb: str = "off", wandb_project: str = "bcrdist", wandb_entity: str | None = None,
                 config: dict | None = None):
        self.enabled = enabled
        self.every_steps = every_steps
        self.run_dir = Path(run_dir)
        self.log_path, self.metrics_path, self.csv_path = (self.run_dir / name for name in LOG_NAMES)
        self.tensorboard_dir = self.run_dir / "tensorboard" if tensorboard else None
        if tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("logging.tensorboard: true needs the tensorboard package: "
                              "pip install 'bcrdist[tensorboard]'")
        if wandb != "off" and importlib.util.find_spec("wandb") is None:
            raise ConfigError(f"logging.wandb: {wandb} needs the wandb package: pip install 'bcrdist[wandb]'")
        self.wandb, self.wandb_project, self.wandb_entity = wandb, wandb_project, wandb_entity
        self.config = config or {}
        self._writer = None
        self._wandb_run = None

    def start(self) -> None:
        """Open the W&B run (`open_wandb_run`) before training; nothing to do without one, or off rank 0."""
        if self.enabled and self.wandb != "off" and self._wandb_run is None:
            self._wandb_run = open_wandb_run(self.run_dir, self.wandb, self.wandb_project, self.wandb_entity,
                                             self.config)

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        print(line, flush=True)
        self._append(self.log_path, line + "\n")

    def progress(self, total: int, label: str) -> Progress:
        """One epoch's steps; off a terminal a line every `every_steps` global steps (see `step_done`)."""
        return Progress(total, label, enabled=self.enabled, emit=self.info, stream=sys.stdout)

    def step_done(self, bar: Progress, loss: float, step: int) -> None:
        """Optimizer step `step` is done with global loss `loss`; every `every_steps` steps also a point of the
        trackers' `train/loss_step`."""
        due = bool(self.every_steps) and step % self.every_steps == 0
        bar.update(postfix=f"loss {loss:.4g}", force=due)
        if not (due and self.enabled):
            return
        if self.tensorboard_dir is not None:
            self._tensorboard(purge_step=step).add_scalar("train/loss_step", loss, global_step=step)
        if self._wandb_run is not None:
            self._wandb_run.log({"train/loss_step": loss}, step=step)

    def metrics(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: _finite_or_none(v) for k, v in record.items()}
        self._append(self.metrics_path, json.dumps(clean) + "\n")
        try:
            self._csv_row(clean)
        except OSError as exc:
            raise write_error(self.csv_path, exc) from None
        if self.tensorboard_dir is not None:
            self._scalars(record)
        if self._wandb_run is not None:
            self._wandb_run.log({"epoch": record["epoch"], **scalar_fields(record)}, step=int(record["step"]))
        self.info(f"{record['phase']}-{record['stage']} epoch {record['epoch']}: loss {record['train_loss']:.4g}, "
                  f"val error {record['val_error']:.4g} (aux {record['val_error_aux']:.4g}), best "
                  f"{record['best_error']:.4g}{' *' if record['improved'] else ''}, lr {record['lr']:.3g}, "
                  f"{record['samples_per_s']:.0f} samples/s, data wait {100 * record['data_wait_share']:.0f}%")

    @staticmethod
    def _append(path: Path, text: str) -> None:
        """Append to one of the run's logs, never through a symbolic link; a failing disk is one line naming
        the file."""
        try:
            with open(open_nofollow(path, "append"), "a") as f:
                f.write(text)
        except OSError as exc:
            raise write_error(path, exc) from None

    def _csv_row(self, record: dict) -> None:
        with open(open_nofollow(self.csv_path, "append"), "a", newline="") as f:
            if os.fstat(f.fileno()).st_size:
                with open(self.csv_path, newline="") as existing:
                    columns, new = next(csv.reader(existing)), False
            else:
                columns, new = list(record), True
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", restval="")
            if new:
                writer.writeheader()
            writer.writerow({k: "" if v is None else v for k, v in record.items()})

    def final_metrics(self, errors: dict, step: int) -> None:
        """The best model's final errors (results.json's `errors`) at optimizer step `step`: TensorBoard
        scalars `SPLIT/METRIC_STAT` with the run's hyperparameters, and the W&B run's summary."""
        if not self.enabled:
            return
        final = final_scalars(errors)
        if self.tensorboard_dir is not None:
            from torch.utils.tensorboard.summary import hparams

            # no purge: a run resumed at its end logs no step the interrupted one had logged before
            writer = self._tensorboard(purge_step=None)
            for tag, value in final.items():
                writer.add_scalar(tag, value, global_step=step)
            for summary in hparams(flat_hparams(self.config), final):
                writer.file_writer.add_summary(summary, step)
            writer.flush()
        if self._wandb_run is not None:
            self._wandb_run.summary.update(final)

    def _tensorboard(self, purge_step: int | None):
        """The run's event writer; the first use of a (resumed) run opens a new event file from `purge_step`."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.tensorboard_dir), purge_step=purge_step)
        return self._writer

    def _scalars(self, record: dict) -> None:
        step = int(record["step"])
        writer = self._tensorboard(purge_step=step)
        for key, value in scalar_fields(record).items():
            writer.add_scalar(key, value, global_step=step, walltime=record.get("wall_time"))
        writer.flush()

    def close(self, failed: bool = False) -> None:
        """Close the TensorBoard event file (each record is flushed as it is written, so that is tidiness) and
        finish the W&B run, which W&B marks failed when the training raised (`failed`). The trainer calls this
        on every exit path; W&B's service process ends when this process exits."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb_run is not None:
            run, self._wandb_run = self._wandb_run, None
            run.finish(exit_code=1 if failed else 0)
