"""Run logging on rank 0: `train.log` (human lines, also printed), `metrics.jsonl` (one JSON object per
evaluation), the same records as `metrics.csv`, optional TensorBoard event files in `tensorboard/`, and
per-epoch progress (`bcrdist.progress.Progress`). Other ranks log nothing.

The CSV's columns are those of its first record (a resumed run appends rows under the existing header;
keys a later record lacks are empty cells). TensorBoard gets every numeric field of a record as a scalar
of that name at the record's optimizer step; a resumed run starts a new event file that discards, in
TensorBoard's view, the events the interrupted run logged from that step on (`purge_step`).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

from bcrdist.errors import ConfigError
from bcrdist.fileio import write_error
from bcrdist.progress import Progress

# record fields that are positions or flags rather than measurements
_NOT_SCALARS = {"phase", "stage", "epoch", "step", "improved", "wall_time"}


def _finite_or_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


class RunLogger:
    """`enabled` on rank 0 only; `tensorboard` also writes RUN/tensorboard/ (needs the tensorboard package,
    checked on every rank so that all ranks fail together, before training)."""

    def __init__(self, run_dir: Path, enabled: bool, every_steps: int = 0, tensorboard: bool = False):
        self.enabled = enabled
        self.every_steps = every_steps
        self.log_path = Path(run_dir) / "train.log"
        self.metrics_path = Path(run_dir) / "metrics.jsonl"
        self.csv_path = Path(run_dir) / "metrics.csv"
        self.tensorboard_dir = Path(run_dir) / "tensorboard" if tensorboard else None
        if tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("logging.tensorboard: true needs the tensorboard package: "
                              "pip install 'bcrdist[tensorboard]'")
        self._writer = None

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
        bar.update(postfix=f"loss {loss:.4g}", force=bool(self.every_steps) and step % self.every_steps == 0)

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
        self.info(f"{record['phase']}-{record['stage']} epoch {record['epoch']}: loss {record['train_loss']:.4g}, "
                  f"val error {record['val_error']:.4g} (aux {record['val_error_aux']:.4g}), best "
                  f"{record['best_error']:.4g}{' *' if record['improved'] else ''}, lr {record['lr']:.3g}, "
                  f"{record['samples_per_s']:.0f} samples/s, data wait {100 * record['data_wait_share']:.0f}%")

    @staticmethod
    def _append(path: Path, text: str) -> None:
        """Append to one of the run's logs; a failing disk is one line naming the file."""
        try:
            with open(path, "a") as f:
                f.write(text)
        except OSError as exc:
            raise write_error(path, exc) from None

    def _csv_row(self, record: dict) -> None:
        if self.csv_path.is_file() and self.csv_path.stat().st_size:
            with open(self.csv_path, newline="") as f:
                columns = next(csv.reader(f))
            new = False
        else:
            columns, new = list(record), True
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", restval="")
            if new:
                writer.writeheader()
            writer.writerow({k: "" if v is None else v for k, v in record.items()})

    def _scalars(self, record: dict) -> None:
        step = int(record["step"])
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.tensorboard_dir), purge_step=step)
        for key, value in record.items():
            if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self._writer.add_scalar(key, value, global_step=step, walltime=record.get("wall_time"))
        self._writer.flush()

    def close(self) -> None:
        """Close the TensorBoard event file (each record is flushed as it is written, so this is tidiness)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
