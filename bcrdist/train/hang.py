"""The one line a training run stops with when a rank stops answering (`bcrdist.errors.HangError`)."""

from __future__ import annotations

from pathlib import Path

from bcrdist.distributed import DistContext
from bcrdist.distributed.heartbeat import Silence
from bcrdist.train.config import TrainConfig


def hang_message(cfg: TrainConfig, ctx: DistContext, silence: Silence, step: int) -> str:
    """The silent ranks, the timeout in force (named by its config keys), when (`step`: the run's optimizer
    steps so far, 0 during start-up), and where the run's last saved state is."""
    d = cfg.distributed
    keys = " and ".join(key for key, value in (("distributed.init_timeout_s", d.init_timeout_s),
                                               ("distributed.timeout_s", d.timeout_s)) if value == ctx.timeout_s)
    last = Path(cfg.run_dir) / "checkpoints" / "last.pt"
    saved = f"the last saved state is {last}" if last.is_file() else "no state was saved yet"
    when = f"after step {step}" if step else "during start-up"
    return f"{silence.message(when, f'{ctx.timeout_s:g} s, {keys}')}; {saved}"
