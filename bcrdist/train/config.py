"""Training configuration: typed dataclasses loaded from YAML (`bcrdist.config.load_config`).

Every key is documented in docs/configuration.md. Batch sizes are *global* (summed over ranks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bcrdist.errors import ConfigError


@dataclass
class DataConfig:
    path: str = "data/demo"                      # data-set directory (manifest.json + shards)
    train_split: str = "train"                   # split names (splits/<name>.json) or "all"
    val_split: str = "val"
    test_split: str = "test"
    n_valid: int = 1024                          # at most this many validation samples select the model
    antipodal: bool = True                       # the original's input preprocessing
    use_imag: bool = False                       # also feed measure_imag (detector axis doubled)
    noise: float = 0.0                           # multiplicative noise, percent (the original's --noise)
    noise_per_epoch: bool = False                # fresh training noise every epoch (original: one fixed draw)
    percent: float | None = None                 # split by the original rule instead of split files
    normalize_input: bool = True                 # per-detector-channel scale from training statistics
    input_shift: bool = False                    # also subtract the per-channel mean
    normalize_output: bool = True                # divide targets by half their training range (original)
    num_workers: int = 0                         # DataLoader worker processes per rank
    preload: bool = False                        # read the splits into RAM once

    def validate(self):
        if self.noise < 0:
            raise ConfigError(f"data.noise: must be ≥ 0 percent, got {self.noise}")
        if self.n_valid < 1:
            raise ConfigError(f"data.n_valid: must be ≥ 1, got {self.n_valid}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers: must be ≥ 0, got {self.num_workers}")


@dataclass
class ModelConfig:
    alpha: int = 40
    n_cnn: int = 6
    n_cnn3: int = 5
    w_comp: int = 1
    levels: int | None = None                    # default ⌊log2 Ns⌋ − 2

    def validate(self):
        for key in ("alpha", "n_cnn", "n_cnn3", "w_comp"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}: must be ≥ 1, got {getattr(self, key)}")
        if self.w_comp % 2 == 0:
            raise ConfigError(f"model.w_comp: must be odd, got {self.w_comp}")


@dataclass
class OptimConfig:
    name: Literal["nadam", "adamw"] = "nadam"    # NAdam as Keras (eps 1e-7, momentum_decay 0.004)
    lr: float = 1e-3
    weight_decay: float = 0.0                    # AdamW only
    grad_clip: float | None = None               # max global gradient norm
    reset_each_stage: bool = False               # Keras kept the optimizer moments across stages

    def validate(self):
        if self.lr <= 0:
            raise ConfigError(f"optim.lr: must be > 0, got {self.lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip: must be > 0 or null, got {self.grad_clip}")


@dataclass
class ScheduleConfig:
    batch_size: int = 32                         # B, global
    epochs: int = 40                             # the original's N_epoch (first stage of a phase: 2×)
    pretrain: bool = True                        # multi-head pre-training phase
    finetune: bool = True                        # output-only fine-tuning phase
    pretrain_stages: list[tuple[int, float]] | None = None   # (batch mult, lr mult); default the original's
    finetune_stages: list[tuple[int, float]] | None = None
    loss_weights: tuple[float, float] = (1.0, 1.0)  # pre-training loss weights (output, auxiliary head)
    metric: Literal["weighted", "psnr", "rel_l2"] = "weighted"
    patience: int = 10                           # epochs without improvement that end a stage
    rel_threshold: float = 1e-3                  # relative gain that counts as an improvement
    test_weight: float = 1.0                     # fine-tuning: weight of validation vs training-subset error
    keras_compat: bool = False                   # reproduce Keras 2.2 (constant lr per phase, callback quirks)
    initial_weights: str | None = None           # the original's --initialvalue: fine-tune-only branch
    initial_batch_size: int = 256                # that branch's global batch (the original's fixed 256)
    reduce_lr: bool = False                      # reduce-LR on plateau (always on in the initial-weights branch)
    reduce_lr_factor: float = 0.5
    patience_lr: int | None = None
    max_nan_failures: int = 3                    # NaN/inf losses tolerated (rollback + lr cut) before stopping
    nan_lr_factor: float = 0.5
    max_steps: int | None = None                 # stop after this many optimizer steps (tests, smoke runs)

    def validate(self):
        if self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("schedule.batch_size and schedule.epochs must be ≥ 1")
        if not (self.pretrain or self.finetune or self.initial_weights):
            raise ConfigError("schedule: pretrain and finetune are both false: nothing to train")
        if self.patience < 1:
            raise ConfigError(f"schedule.patience: must be ≥ 1, got {self.patience}")
        if not 0 <= self.test_weight <= 1:
            raise ConfigError(f"schedule.test_weight: must be in [0, 1], got {self.test_weight}")


@dataclass
class CheckpointConfig:
    every_steps: int = 500                       # also written at every stage end and on preemption
    resume: str | None = None                    # "auto" (continue from last.pt if present) or a path


@dataclass
class RuntimeConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    compile: Literal["auto", "true", "false"] = "auto"   # auto: on for CUDA, off on CPU
    tf32: bool = False                           # TF32 matmul/conv on Ampere+ (off: the targets need fp32)
    threads: int | None = None                   # torch CPU threads per rank
    deterministic: bool = False                  # torch.use_deterministic_algorithms
    requeue_signal: str = "USR2"                 # Slurm preemption/time-limit signal
    log_every_steps: int = 50


@dataclass
class TrainConfig:
    run_dir: str = "runs/bcrnet"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    results_table: str | None = "results.tsv"    # one row appended per run, like the original's tr2dInvNoise.txt

