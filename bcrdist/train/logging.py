"""Run logging on rank 0: `train.log` (human lines, also printed) and `metrics.jsonl` (one JSON object per
evaluation). Plain lines suit Slurm logs; other ranks log nothing."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.log_path = Path(run_dir) / "train.log"
        self.metrics_path = Path(run_dir) / "metrics.jsonl"

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def metrics(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        self.info(f"{record['phase']}-{record['stage']} epoch {record['epoch']}: loss {record['train_loss']:.4g}, "
                  f"val error {record['val_error']:.4g} (aux {record['val_error_aux']:.4g}), best "
                  f"{record['best_error']:.4g}{' *' if record['improved'] else ''}, lr {record['lr']:.3g}, "
                  f"{record['samples_per_s']:.0f} samples/s, data wait {100 * record['data_wait_share']:.0f}%")
