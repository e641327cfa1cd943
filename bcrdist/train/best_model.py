"""The original's SaveBestModel rules (mnn/callback.py), as a plain state machine.

At every evaluation the monitored error is err = (1 − w)·a + w·b of the two mean errors (a, b) the
caller measures (the original's "train" and "test" slots, `test_weight` w). An evaluation improves on the
best iff err_best > err and |err/err_best − 1| > `rel_threshold` (1e-3: a relative gain of 0.1 %; works for
negative errors such as −PSNR). After an improvement the caller saves the weights as best.
Patience counts epochs since the later of the last improvement and the start of the stage: reaching
`patience` stops the stage; reaching `patience_lr` (when reduce-LR is on and lr > min_lr) multiplies the lr
by `factor` (not below min_lr), reloads the best weights and restarts the count.

The decisions are pure functions of the state and the (already all-reduced) errors; the trainer takes
them on rank 0 and broadcasts them, so no rank ever waits alone.

The tracker's configuration (patience, thresholds, reduce-LR rules, the slot weighting of the current phase)
comes from the run's config; its *state* (`STATE_FIELDS`: best error and parts, their epochs, history) is what
a checkpoint keeps, so a resumed run applies the rules of its own config to the saved state.

Differences from the original, each switchable with `keras_compat=True`:
- the best error starts at +inf (original: 1, so a model worse than 1 was never saved);
- the evaluation at a stage's start counts as that stage's start epoch (original: "epoch 0" of the
  fit, which set the patience origin to 0 and stopped the next epoch whenever the epoch index ≥ patience).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bcrdist.errors import DataError

STATE_FIELDS = ("best_err", "best_parts", "best_epoch", "best_epoch_update", "history")


@dataclass
class Decision:
    """What to do after an evaluation."""

    improved: bool = False
    reduce_lr: bool = False
    new_lr: float | None = None
    stop: bool = False
    reason: str = ""


@dataclass
class BestModelTracker:
    """SaveBestModel rules (the first eight fields) and state (`STATE_FIELDS`); `epoch` arguments are 0-based
    global epoch indices."""

    patience: int = 10
    rel_threshold: float = 1e-3
    test_weight: float = 0.0
    reduce_lr: bool = False
    patience_lr: int | None = None
    factor: float = 0.5
    min_lr: float = 1e-5
    keras_compat: bool = False
    best_err: float = math.inf
    best_parts: tuple[float, float] = (math.inf, math.inf)
    best_epoch: int = 0
    best_epoch_update: int = 0
    history: list[list[float]] = field(default_factory=list)

    def __post_init__(self):
        self.test_weight = min(max(self.test_weight, 0.0), 1.0)
        if self.patience_lr is None:
            self.patience_lr = max(self.patience // 2, 1)
        self.patience_lr = min(self.patience_lr, self.patience)
        if self.keras_compat and self.best_err == math.inf:
            self.best_err, self.best_parts = 1.0, (1.0, 1.0)

    def combine(self, a: float, b: float) -> float:
        return (1 - self.test_weight) * a + self.test_weight * b

    def set_test_weight(self, w: float) -> None:
        """Change the slot weighting (the fine-tuning phase monitors its own combination); the best error
        becomes the new combination of the best parts (it stays +inf while there is none)."""
        self.test_weight = min(max(w, 0.0), 1.0)
        if all(math.isfinite(p) for p in self.best_parts):
            self.best_err = self.combine(*self.best_parts)

    def is_improvement(self, err: float) -> bool:
        if not math.isfinite(err):
            return False
        if not math.isfinite(self.best_err):
            return True
        if self.best_err == 0:
            return False
        return self.best_err > err and abs(err / self.best_err - 1) > self.rel_threshold

    def start_stage(self, start_epoch: int) -> None:
        """A new stage begins at `start_epoch`: the patience window restarts there."""
        self.best_epoch_update = start_epoch

    def compare_with_best(self, epoch: int, a: float, b: float, *, at_stage_start: bool = False) -> bool:
        """Compare the errors measured after `epoch` (or before it, at a stage start) with the best model's,
        record them in the history and, if they improve on it, make them the best; True if improved."""
        err = self.combine(a, b)
        label = epoch if at_stage_start else epoch + 1
        self.history.append([label, a, b])
        if not self.is_improvement(err):
            return False
        self.best_err, self.best_parts = err, (a, b)
        mark = 0 if (at_stage_start and self.keras_compat) else label
        self.best_epoch = self.best_epoch_update = mark
        return True

    def decide(self, epoch: int, lr: float) -> Decision:
        """The end-of-epoch rules (after `compare_with_best` for that epoch): reduce-LR, then patience."""
        d = Decision()
        waited = epoch + 1 - self.best_epoch_update
        if self.reduce_lr and waited >= self.patience_lr and lr > self.min_lr + 1e-7:
            d.reduce_lr, d.new_lr = True, max(lr * self.factor, self.min_lr)
            self.best_epoch = self.best_epoch_update = epoch + 1
            waited = 0
        if waited >= self.patience:
            d.stop, d.reason = True, f"no improvement for {waited} epochs (patience {self.patience})"
        return d

    def state_dict(self) -> dict:
        """The state (`STATE_FIELDS`), a snapshot of plain values; not the configuration."""
        return {"best_err": self.best_err, "best_parts": list(self.best_parts), "best_epoch": self.best_epoch,
                "best_epoch_update": self.best_epoch_update, "history": [list(row) for row in self.history]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` with this tracker's own configuration."""
        if set(state) != set(STATE_FIELDS):
            raise DataError(f"best-model tracker state: expected the keys {', '.join(STATE_FIELDS)}, got "
                            f"{', '.join(sorted(state))}")
        self.best_err = state["best_err"]
        self.best_parts = tuple(state["best_parts"])
        self.best_epoch = state["best_epoch"]
        self.best_epoch_update = state["best_epoch_update"]
        self.history = [list(row) for row in state["history"]]
