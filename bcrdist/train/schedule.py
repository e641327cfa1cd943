"""The original's training schedule as a list of stages.

Branch A (no initial weights): multi-head pre-training over (global batch, lr) stages
(B, lr), (2B, lr), (4B, lr), (8B, lr), (16B, lr), (16B, lr·√0.1), (16B, lr·0.1), (16B, lr·0.1^1.5),
(16B, lr·0.01), then fine-tuning of the output alone over (8B, lr), (16B, lr), (16B, lr·0.1), (16B, lr·0.01).
In each phase the first stage lasts 2·epochs, the others `epochs`; epoch numbers are global and
deterministic (a stage stopped early by patience still hands over at its planned end). The best weights
are reloaded after every stage.

Branch B (initial weights given, the original's `--initialvalue`): one fine-tuning stage of `epochs`
epochs at lr/10, batch 256, with reduce-LR on plateau.

`keras_compat`: Keras 2.2 built its training function on a phase's first `fit`, baking in that lr; later
assignments to `optimizer.lr` were ignored, so every stage of a phase really ran at the phase's first lr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PRETRAIN_STAGES = ((1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0), (16, 1.0), (16, math.sqrt(0.1)), (16, 0.1),
                   (16, 0.1 ** 1.5), (16, 0.01))
FINETUNE_STAGES = ((8, 1.0), (16, 1.0), (16, 0.1), (16, 0.01))


@dataclass(frozen=True)
class Stage:
    """One `fit` of the original: `phase` 'pretrain' | 'finetune', index within its phase, global batch,
    learning rate and global epoch range [start_epoch, end_epoch)."""

    phase: str
    index: int
    global_batch: int
    lr: float
    start_epoch: int
    end_epoch: int

    @property
    def name(self) -> str:
        return f"{self.phase}-{self.index}"


def build_stages(batch_size: int, lr: float, epochs: int, *, pretrain: bool = True, finetune: bool = True,
                 keras_compat: bool = False, pretrain_stages=PRETRAIN_STAGES,
                 finetune_stages=FINETUNE_STAGES, first_stage_factor: int = 2) -> list[Stage]:
    """All stages of branch A, in order. `*_stages` are (batch multiplier, lr multiplier) pairs."""
    stages: list[Stage] = []
    epoch = 0
    for phase, enabled, plan in (("pretrain", pretrain, pretrain_stages), ("finetune", finetune, finetune_stages)):
        if not enabled:
            continue
        for i, (batch_mult, lr_mult) in enumerate(plan):
            length = epochs * (first_stage_factor if i == 0 else 1)
            stage_lr = lr * (plan[0][1] if keras_compat else lr_mult)
            stages.append(Stage(phase, i, batch_size * batch_mult, stage_lr, epoch, epoch + length))
            epoch += length
    return stages


def initial_value_stage(lr: float, epochs: int, batch_size: int = 256) -> list[Stage]:
    """Branch B: one fine-tuning stage at lr/10 (the original's `--initialvalue`)."""
    return [Stage("finetune", 0, batch_size, lr / 10, 0, epochs)]
