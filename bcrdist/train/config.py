"""Training configuration: typed dataclasses loaded from YAML (`bcrdist.config.load_config`).

Each key's one-line meaning is declared with its field (`setting(..., help=...)`); `bcrdist config keys` lists
them and docs/configuration.md tables them (`bcrdist config reference --write docs/configuration.md`).
Batch sizes are *global* (summed over ranks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bcrdist.config import section, setting
from bcrdist.errors import ConfigError


@dataclass
class DataConfig:
    path: str = setting("data/demo", help="data-set directory (`manifest.json` + shards; see data-format.md)")
    train_split: str = setting("train", help="training split: a name (`DATA/splits/NAME.json`, made by "
                               "`bcrdist split`), a split file, or `all`")
    val_split: str = setting("val", help="validation split (name, file or `all`, as `data.train_split`)")
    test_split: str = setting("test", help="test split (name, file or `all`, as `data.train_split`)")
    n_valid: int = setting(1024, help="at most this many validation samples select the model (the first ones "
                           "of the split)")
    antipodal: bool = setting(True, help="the original's input preprocessing (pairs each centre angle with its "
                              "antipode)")
    use_imag: bool = setting(False, help="also feed `measure_imag`, concatenated along the detector axis "
                             "(Nd doubles)")
    noise: float = setting(0.0, help="multiplicative noise X·(1 + σε), σ = noise/100, on training, validation "
                           "and test inputs (the original's `--noise`, percent)")
    noise_per_epoch: bool = setting(False, help="a fresh training-noise draw every epoch (data augmentation); "
                                    "false = one fixed draw per sample, as the original")
    percent: float | None = setting(None, help="instead of split files: the original rule (train = first "
                                    "int(N·percent), test = next min(max(n_train, 5000), N − n_train), validation "
                                    "= first `n_valid` test samples, as the original selected on the test set)")
    normalize_input: bool = setting(True, help="divide each input channel by its RMS over the first 4096 "
                                    "training samples (stored in the checkpoint)")
    input_shift: bool = setting(False, help="also subtract the channel mean (then divide by the standard "
                                "deviation)")
    normalize_output: bool = setting(True, help="divide targets by half their range over the data set (the "
                                     "original's output scaling; stored in the checkpoint)")
    num_workers: int = setting(0, help="DataLoader worker processes per rank (0: one prefetch thread)")
    preload: bool = setting(False, help="read the splits into memory once")

    def validate(self):
        if self.noise < 0:
            raise ConfigError(f"data.noise: must be ≥ 0 percent, got {self.noise}")
        if self.n_valid < 1:
            raise ConfigError(f"data.n_valid: must be ≥ 1, got {self.n_valid}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers: must be ≥ 0, got {self.num_workers}")


@dataclass
class ModelConfig:
    alpha: int = setting(40, help="channels α")
    n_cnn: int = setting(6, help="band-matrix layers per level (the original's N_cnn)")
    n_cnn3: int = setting(5, help="2D refinement layers (N_cnn3)")
    w_comp: int = setting(1, help="kernel of the first and of the auxiliary-head layer (odd)")
    levels: int | None = setting(None, help="wavelet levels; null = ⌊log2 Ns⌋ − 2")

    def validate(self):
        for key in ("alpha", "n_cnn", "n_cnn3", "w_comp"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}: must be ≥ 1, got {getattr(self, key)}")
        if self.w_comp % 2 == 0:
            raise ConfigError(f"model.w_comp: must be odd, got {self.w_comp}")


@dataclass
class OptimConfig:
    name: Literal["nadam", "adamw"] = setting("nadam", help="`nadam` (as Keras 2.2: β (0.9, 0.999), ε 1e-7, "
                                              "momentum decay 0.004) or `adamw`")
    lr: float = setting(1e-3, help="base learning rate (the original's `--lr`)")
    weight_decay: float = setting(0.0, help="weight decay, AdamW only")
    grad_clip: float | None = setting(None, help="clip the global gradient norm to this value; null = no clipping")
    reset_each_stage: bool = setting(False, help="new optimizer moments at every stage (Keras kept them across "
                                     "stages and reloads; a new phase always starts fresh)")

    def validate(self):
        if self.lr <= 0:
            raise ConfigError(f"optim.lr: must be > 0, got {self.lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip: must be > 0 or null, got {self.grad_clip}")


@dataclass
class ScheduleConfig:
    batch_size: int = setting(32, help="B, global: pre-training stages use B, 2B, 4B, 8B, 16B, 16B…; fine-tuning "
                              "8B, 16B…")
    epochs: int = setting(40, help="the original's `--epoch`: each stage's length, the first stage of a phase "
                          "twice that")
    pretrain: bool = setting(True, help="run the multi-head pre-training phase")
    finetune: bool = setting(True, help="run the output-only fine-tuning phase")
    pretrain_stages: list[tuple[int, float]] | None = setting(
        None, help="pre-training stages as [batch multiplier, lr multiplier]; null = the original's 9 stages")
    finetune_stages: list[tuple[int, float]] | None = setting(
        None, help="fine-tuning stages as [batch multiplier, lr multiplier]; null = the original's 4 stages")
    loss_weights: tuple[float, float] = setting((1.0, 1.0), help="pre-training loss weights of (output, "
                                                "auxiliary head); Fan used 1/1, Ma 0.5/0.5")
    metric: Literal["weighted", "psnr", "rel_l2"] = setting(
        "weighted", help="selection error: `weighted` (radius-weighted relative error), `rel_l2`, or `psnr` (−PSNR)")
    patience: int = setting(10, help="epochs without improvement that end a stage")
    rel_threshold: float = setting(1e-3, help="an improvement must lower the error by more than this fraction")
    test_weight: float = setting(1.0, help="fine-tuning selection error = (1−w)·training-subset error + "
                                 "w·validation error")
    keras_compat: bool = setting(False, help="reproduce Keras 2.2: each phase runs at its first lr (Keras baked "
                                 "the first lr into its training graph and ignored later changes), best error "
                                 "starts at 1, the stage-start evaluation counts as \"epoch 0\"")
    initial_weights: str | None = setting(None, help="the original's `--initialvalue`: fine-tune only, from this "
                                          "checkpoint or Keras `.h5`, at lr/10, batch `initial_batch_size`, "
                                          "patience max(epochs/40, 40), reduce-LR by √0.1")
    initial_batch_size: int = setting(256, help="global batch of the initial-weights branch (the original's "
                                      "fixed 256)")
    reduce_lr: bool = setting(False, help="reduce-LR on plateau with reload of the best weights (always on in the "
                              "initial-weights branch)")
    reduce_lr_factor: float = setting(0.5, help="on a plateau the lr is multiplied by this")
    patience_lr: int | None = setting(None, help="epochs without improvement before the lr is reduced; null = "
                                      "max(patience // 2, 1)")
    max_nan_failures: int = setting(3, help="a non-finite loss (on any rank) rolls back to the best weights and "
                                    "multiplies the lr by `nan_lr_factor`; after this many the run stops with an "
                                    "error")
    nan_lr_factor: float = setting(0.5, help="lr factor applied at each non-finite-loss rollback")
    max_steps: int | None = setting(None, help="stop after this many optimizer steps (tests, smoke runs); null = "
                                    "no limit")

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
    every_steps: int = setting(500, help="write `last.pt` this often (also at every stage end and on preemption)")
    resume: str | None = setting(None, help="`auto`: continue from `RUN/checkpoints/last.pt` if it exists; or a "
                                 "checkpoint path")


@dataclass
class RuntimeConfig:
    device: Literal["auto", "cpu", "cuda"] = setting("auto", help="`auto` (GPU `local_rank` if CUDA is "
                                                     "available), `cpu`, `cuda`")
    precision: Literal["32", "bf16-mixed", "16-mixed"] = setting(
        "32", help="`32`, `bf16-mixed`, `16-mixed` (with a GradScaler, checkpointed)")
    compile: Literal["auto", "true", "false"] = setting("auto", help="torch.compile after DDP wrapping; `auto` = "
                                                        "on for CUDA, off on CPU")
    tf32: bool = setting(False, help="TF32 matmuls/convolutions on Ampere+ (the errors the schedule selects on "
                         "are ~1e-2, TF32 is ~1e-3)")
    threads: int | None = setting(None, help="torch CPU threads per rank; null = cores / ranks on the node")
    deterministic: bool = setting(False, help="`torch.use_deterministic_algorithms(True)`")
    requeue_signal: str = setting("USR2", help="the Slurm preemption/time-limit warning signal (SIGTERM is "
                                  "handled too)")
    log_every_steps: int = setting(50, help="off a terminal, a progress line every this many optimizer steps "
                                  "(a terminal shows a live progress bar)")


@dataclass
class TrainConfig:
    run_dir: str = setting("runs/bcrnet", help="run directory: `config.yaml`, `train.log`, `metrics.jsonl`, "
                           "`results.json`, `checkpoints/`")
    seed: int = setting(0, help="model initialisation, data order and noise (data order and noise depend only on "
                        "(seed, epoch, sample))")
    data: DataConfig = section(DataConfig, help="the data set, its splits and the input/target preprocessing")
    model: ModelConfig = section(ModelConfig, help="BCR-Net (`bcrdist.models.BCRNet`); input/output sizes come "
                                 "from the data")
    optim: OptimConfig = section(OptimConfig, help="the optimizer")
    schedule: ScheduleConfig = section(ScheduleConfig, help="the original's recipe of stages, model selection "
                                       "and stopping (see `bcrdist/train/schedule.py`)")
    checkpoint: CheckpointConfig = section(CheckpointConfig, help="when `last.pt` is written and where a run "
                                           "resumes from")
    runtime: RuntimeConfig = section(RuntimeConfig, help="device, precision, compilation, threads and signals")
    results_table: str | None = setting("results.tsv", help="one tab-separated row per run appended here "
                                        "(relative paths: next to `run_dir`), like the original's "
                                        "`tr2dInvNoise.txt`; null for none")
