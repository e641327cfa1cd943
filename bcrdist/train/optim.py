"""The optimizer of the original recipe (Keras 2.2 Nadam) or AdamW, and the learning-rate setter the
schedule uses."""

from __future__ import annotations

import torch

from bcrdist.train.config import TrainConfig


def make_optimizer(cfg: TrainConfig, params, lr: float) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.optim` over `params` at learning rate `lr`."""
    if cfg.optim.name == "nadam":
        # Keras 2.2 Nadam: β = (0.9, 0.999), ε = K.epsilon() = 1e-7, schedule_decay 0.004
        return torch.optim.NAdam(params, lr=lr, betas=(0.9, 0.999), eps=1e-7, momentum_decay=0.004)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.optim.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
