"""Training configuration: typed dataclasses loaded from YAML (`bcrdist.config.load_config`).

Each key's one-line meaning and, for a number, its range are declared with its field (`setting(..., help=...,
low=..., high=...)`; the loader checks them, and refuses inf and NaN for every float); `bcrdist config keys`
lists them and docs/configuration.md tables them (`bcrdist config reference --write docs/configuration.md`).
Batch sizes are *global* (summed over ranks).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal

from bcrdist.config import Range, check_ranges, section, setting
from bcrdist.errors import ConfigError, shown
from bcrdist.models import network_class
from bcrdist.models.bcnn import BCNNConfig
from bcrdist.models.nio import NIOConfig
from bcrdist.models.study_cnn import CNNBConfig, CNNConfig, StudyBCNNConfig
from bcrdist.noise import MAX_LEVEL

# np.random.seed (seeded with the run's seed, with torch and random) takes [0, 2**32 − 1]
SEED_LIMIT = 2**32 - 1
# a stage: [batch multiplier, lr multiplier]
STAGE_RANGES = (Range(low=1, what="batch multiplier"), Range(low=0, low_open=True, what="lr multiplier"))


@dataclass
class DataConfig:
    path: str = setting("data/demo", help="data-set directory (`manifest.json` + shards; see data-format.md)")
    train_split: str = setting("train", help="training split: a name (`DATA/splits/NAME.json`, made by "
                               "`bcrdist split`), a split file, or `all`")
    val_split: str = setting("val", help="validation split (name, file or `all`, as `data.train_split`)")
    test_split: str = setting("test", help="test split (name, file or `all`, as `data.train_split`)")
    n_valid: int = setting(1024, help="at most this many validation samples select the model (the first ones "
                           "of the split)", low=1)
    input: str = setting("measure", help="the dataset the network reads: `measure` (Fan's layout), `farfield` "
                         "(the far-field layout), or any dataset (N, angles, detectors) of the data set; a complex "
                         "one through `data.use_imag`, or one part named `NAME.real` / `NAME.imag`")
    target: str = setting("coe", help="the dataset the network predicts: `coe` (polar η), `image` (Cartesian η), "
                          "or any dataset (N, angles, W) of the data set")
    antipodal: bool | None = setting(None, help="the original's input preprocessing (pairs each centre angle with "
                                     "its antipode); only on the `measure` layout on a periodic grid; null = on "
                                     "there, off elsewhere")
    use_imag: bool | None = setting(None, help="`measure` input: also feed `measure_imag`; a complex input: false = "
                                    "the real part only (what the port fed BCR-Net), true = real and imaginary "
                                    "parts; the second part is concatenated along the detector axis (Nd doubles); "
                                    "null = false for `measure`, must be chosen for a complex input")
    noise: float = setting(0.0, help="training-input noise level δ, percent (the original's `--noise`; at most "
                           "1000: noise ten times the data); also the validation and test noise unless "
                           "`data.eval_noise` is set", low=0, high=MAX_LEVEL)
    noise_model: Literal["fan", "complex", "additive"] = setting(
        "fan", help="training noise model (`bcrdist.noise`): `fan` X(1 + δε) on Re and Im parts separately (the "
        "original's), `complex` (1 + δZ)·F with Z complex standard normal, `additive` F + δ‖F‖/√n·Z; on the "
        "complex far field before any layout transform (`measure` + i·`measure_imag` on Fan's layout, where `fan` "
        "acts on the network input, as the original)")
    noise_max: float | None = setting(None, help="training split only: each sample's noise level drawn uniformly "
                                      "from [data.noise, data.noise_max] with its noise (augmentation over levels, "
                                      "one network for a range of them); null = every sample at data.noise",
                                      low=0, high=MAX_LEVEL)
    eval_noise: float | None = setting(None, help="validation and test noise level, percent (one fixed draw per "
                                       "sample); null = `data.noise`", low=0, high=MAX_LEVEL)
    eval_noise_model: Literal["fan", "complex", "additive"] | None = setting(
        None, help="validation and test noise model (as `data.noise_model`); null = `data.noise_model`")
    noise_per_epoch: bool = setting(False, help="a fresh training-noise draw every epoch (data augmentation); "
                                    "false = one fixed draw per sample, as the original")
    percent: float | None = setting(None, help="instead of split files: the original rule (train = first "
                                    "int(N·percent), test = next min(max(n_train, 5000), N − n_train), validation "
                                    "= first `n_valid` test samples, as the original selected on the test set)",
                                    low=0, high=1, low_open=True, high_open=True)
    normalize_input: bool = setting(True, help="divide each input channel by its RMS over the first 4096 "
                                    "training samples (stored in the checkpoint)")
    input_shift: bool = setting(False, help="also subtract the channel mean (then divide by the standard "
                                "deviation)")
    normalize_output: bool = setting(True, help="divide targets by half their range over the data set (the "
                                     "original's output scaling; stored in the checkpoint)")
    normalization: Literal["rms", "minmax"] = setting(
        "rms", help="`rms`: bcrdist's (inputs as data.normalize_input, targets as data.normalize_output); `minmax`: "
        "the study's, Re and Im of the input each mapped from [min, max] of the first training samples to "
        "[−1, 1], the network's output from [−1, 1] to the target's [min, max] over the data set")
    num_workers: int = setting(0, help="DataLoader worker processes per rank (0: one prefetch thread)", low=0)
    preload: bool = setting(False, help="read the splits into memory once")

    def validate(self):
        check_ranges(self, "data")
        if self.noise_max is not None and self.noise_max < self.noise:
            raise ConfigError(f"data.noise_max: {self.noise_max} is below data.noise {self.noise}")

    def evaluation_noise(self) -> tuple[str, float]:
        """(model, level) of the validation and test splits: `eval_noise_model` / `eval_noise`, null = the
        training noise's."""
        return (self.noise_model if self.eval_noise_model is None else self.eval_noise_model,
                self.noise if self.eval_noise is None else self.eval_noise)

    def noise_record(self) -> dict:
        """Both noises as a run's results record them: {"train": {model, level, per_epoch}, "eval": {model,
        level}}."""
        model, level = self.evaluation_noise()
        return {"train": {"model": self.noise_model, "level": self.noise, "level_max": self.noise_max,
                          "per_epoch": self.noise_per_epoch},
                "eval": {"model": model, "level": level}}


@dataclass
class ModelConfig:
    type: str = setting("bcrnet", help="the registered network (`bcrdist config networks`): `bcrnet` (BCR-Net, "
                        "its keys are this section's), `bcnn` (bcrdist's Born–Tikhonov layer + U-Net), the study's "
                        "`cnn`, `cnnb`, `study_bcnn`, `nio`, or one registered with `bcrdist.models.register`")
    alpha: int = setting(40, help="channels α", low=1)
    n_cnn: int = setting(6, help="band-matrix layers per level (the original's N_cnn)", low=1)
    n_cnn3: int = setting(5, help="2D refinement layers (N_cnn3)", low=1)
    w_comp: int = setting(1, help="kernel of the first and of the auxiliary-head layer (odd)", low=1)
    levels: int | None = setting(None, help="wavelet levels (Ns must be divisible by 2^levels); null = ⌊log2 Ns⌋ "
                                 "− 2, or fewer where Ns is not divisible by that power of 2 (100 → 2)", low=1)
    pad_to: tuple[int, int] | None = setting(None, help="[H, W]: zero-pad the network input's angle axis to H and its "
                                       "last axis to W, and predict a target padded alike (e.g. [128, 128] for "
                                       "100×100 data, levels 5); the padding counts in no loss or metric; null = "
                                       "none", low=1)
    bc_padding: Literal["auto", "period", "zero"] = setting(
        "auto", help="BCR-Net's padding along the angle axis, 2D refinement head included: `period` or `zero`; "
        "`auto` = period on periodic angle grids, zero otherwise")
    bcnn: BCNNConfig = section(BCNNConfig, help="BCNN (`model.type: bcnn`, `bcrdist.models.bcnn`): the Born layer "
                               "and the post-correction U-Net")
    cnn: CNNConfig = section(CNNConfig, help="the study's CNN (`model.type: cnn`, `bcrdist.models.study_cnn`): far "
                             "field → image")
    cnnb: CNNBConfig = section(CNNBConfig, help="the study's CNNB (`model.type: cnnb`): far field → corrected far field "
                               "→ damped-least-squares Born image")
    study_bcnn: StudyBCNNConfig = section(StudyBCNNConfig, help="the study's BCNN (`model.type: study_bcnn`): damped "
                                          "least-squares Born image + a CNN's residual")
    nio: NIOConfig = section(NIOConfig, help="the study's NIO (`model.type: nio`, `bcrdist.models.nio`): DeepONet "
                             "(encoder branch, grid trunk) → FNO")
    options: dict = setting(default_factory=dict, help="the config section of a network registered outside bcrdist "
                            "(`bcrdist.models.register`), read by its `config_class`")

    def validate(self):
        check_ranges(self, "model")
        network_class(self.type)
        if self.w_comp % 2 == 0:
            raise ConfigError(f"model.w_comp: must be odd, got {self.w_comp}")


@dataclass
class OptimConfig:
    name: Literal["nadam", "adamw"] = setting("nadam", help="`nadam` (as Keras 2.2: β (0.9, 0.999), ε 1e-7, "
                                              "momentum decay 0.004) or `adamw`")
    lr: float = setting(1e-3, help="base learning rate (the original's `--lr`)", low=0, low_open=True)
    weight_decay: float = setting(0.0, help="weight decay, AdamW only", low=0)
    grad_clip: float | None = setting(None, help="clip the global gradient norm to this value; null = no clipping",
                                      low=0, low_open=True)
    reset_each_stage: bool = setting(False, help="new optimizer moments at every stage (Keras kept them across "
                                     "stages and reloads; a new phase always starts fresh)")


@dataclass
class ScheduleConfig:
    batch_size: int = setting(32, help="B, global: pre-training stages use B, 2B, 4B, 8B, 16B, 16B…; fine-tuning "
                              "8B, 16B…", low=1)
    epochs: int = setting(40, help="the original's `--epoch`: each stage's length, the first stage of a phase "
                          "twice that", low=1)
    pretrain: bool = setting(True, help="run the multi-head pre-training phase")
    finetune: bool = setting(True, help="run the output-only fine-tuning phase")
    pretrain_stages: list[tuple[int, float]] | None = setting(
        None, help="pre-training stages as [batch multiplier, lr multiplier]; null = the original's 9 stages; "
        "empty only with `pretrain: false`", items=STAGE_RANGES)
    finetune_stages: list[tuple[int, float]] | None = setting(
        None, help="fine-tuning stages as [batch multiplier, lr multiplier]; null = the original's 4 stages; "
        "empty only with `finetune: false`", items=STAGE_RANGES)
    loss_weights: tuple[float, float] = setting((1.0, 1.0), help="pre-training loss weights of (output, "
                                                "auxiliary head), not both 0; Fan used 1/1, Ma 0.5/0.5", low=0)
    metric: Literal["auto", "weighted", "psnr", "rel_l2", "rel_l1"] = setting(
        "auto", help="selection error: `weighted` (radius-weighted relative error, polar targets only), `rel_l2`, "
        "`rel_l1`, or `psnr` (−PSNR); `auto` = weighted on polar targets, rel_l2 on Cartesian ones")
    patience: int = setting(10, help="epochs without improvement that end a stage", low=1)
    rel_threshold: float = setting(1e-3, help="an improvement must lower the error by more than this fraction",
                                   low=0)
    test_weight: float = setting(1.0, help="fine-tuning selection error = (1−w)·training-subset error + "
                                 "w·validation error", low=0, high=1)
    keras_compat: bool = setting(False, help="reproduce Keras 2.2: each phase runs at its first lr (Keras baked "
                                 "the first lr into its training graph and ignored later changes), best error "
                                 "starts at 1, the stage-start evaluation counts as \"epoch 0\"")
    initial_weights: str | None = setting(None, help="the original's `--initialvalue`: fine-tune only, from this "
                                          "checkpoint or Keras `.h5`, at lr/10, batch `initial_batch_size`, "
                                          "patience max(epochs/40, 40), reduce-LR by √0.1")
    initial_batch_size: int = setting(256, help="global batch of the initial-weights branch (the original's "
                                      "fixed 256)", low=1)
    reduce_lr: bool = setting(False, help="reduce-LR on plateau with reload of the best weights (always on in the "
                              "initial-weights branch)")
    reduce_lr_factor: float = setting(0.5, help="on a plateau the lr is multiplied by this", low=0, high=1,
                                      low_open=True, high_open=True)
    patience_lr: int | None = setting(None, help="epochs without improvement before the lr is reduced; null = "
                                      "max(patience // 2, 1)", low=1)
    max_nan_failures: int = setting(3, help="a non-finite loss (on any rank) rolls back to the best weights and "
                                    "multiplies the lr by `nan_lr_factor`, this many times; the next one stops the "
                                    "run with an error (0: the first one does)", low=0)
    nan_lr_factor: float = setting(0.5, help="lr factor applied at each non-finite-loss rollback", low=0, high=1,
                                   low_open=True, high_open=True)
    max_steps: int | None = setting(None, help="stop after this many optimizer steps (tests, smoke runs); null = "
                                    "no limit", low=1)

    def validate(self):
        check_ranges(self, "schedule")
        if not (self.pretrain or self.finetune or self.initial_weights):
            raise ConfigError("schedule: pretrain and finetune are both false: nothing to train")
        for phase, enabled, stages in (("pretrain", self.pretrain, self.pretrain_stages),
                                       ("finetune", self.finetune, self.finetune_stages)):
            if enabled and stages == []:
                raise ConfigError(f"schedule.{phase}_stages: empty; give at least one [batch multiplier, lr "
                                  f"multiplier], null for the original's stages, or set schedule.{phase}: false")
        if not any(self.loss_weights):
            raise ConfigError(f"schedule.loss_weights: must not both be 0 (nothing to train on), got "
                              f"{list(self.loss_weights)}")


@dataclass
class CheckpointConfig:
    every_steps: int = setting(500, help="write `last.pt` every this many optimizer steps (also at every stage "
                               "end and on preemption)", low=1)
    resume: str | None = setting(None, help="`auto`: continue the run in `run_dir` from `RUN/checkpoints/last.pt` "
                                 "if it exists (a finished run is reported complete and left as it is); or a "
                                 "checkpoint path; a resume may not change what the run is (see below)")


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
    threads: int | None = setting(None, help="torch CPU threads per rank; null = cores / ranks on the node", low=1)
    deterministic: bool = setting(False, help="`torch.use_deterministic_algorithms(True)`")
    host_memory: Literal["auto", "keep", "release"] = setting(
        "auto", help="`keep`: host memory a step frees stays mapped for the next step (glibc malloc: no mmap for "
        "large blocks, no trimming), instead of being faulted in again page by page: the same arithmetic, "
        "faster CPU steps for networks with activations of tens of MB or more (docs/benchmarks.md); the process "
        "keeps its peak resident memory. `release`: the C library's defaults. `auto` = keep when training on "
        "the CPU")
    requeue_signal: str = setting("USR2", help="the Slurm preemption/time-limit warning signal (SIGTERM is "
                                  "handled too)")
    log_every_steps: int = setting(50, help="off a terminal, a progress line every this many optimizer steps, "
                                  "0 for none (a terminal shows a live progress bar)", low=0)


@dataclass
class DistributedConfig:
    init_timeout_s: float = setting(1800.0, help="seconds a rank waits for the others in a collective from start-up "
                                    "through the first optimizer step: rendezvous, run plan, Born fit on rank 0 "
                                    "while the others wait, the first evaluation", low=0, low_open=True)
    timeout_s: float = setting(600.0, help="seconds a rank waits for the others in every collective after the "
                               "first optimizer step; a rank silent this long stops the run, naming it "
                               "(docs/slurm.md)", low=0, low_open=True)


@dataclass
class LoggingConfig:
    tensorboard: bool = setting(False, help="also write TensorBoard event files to `RUN/tensorboard/` (rank 0; "
                                "needs `pip install 'bcrdist[tensorboard]'`): every evaluation's fields, the "
                                "training loss every `runtime.log_every_steps` steps (`train/loss_step`), and the "
                                "best model's final errors (`test/rel_l2_mean`, …) with the run's hyperparameters")
    wandb: Literal["off", "offline", "online"] = setting(
        "off", help="also log to a Weights & Biases run in `RUN/wandb/` what TensorBoard gets (rank 0; needs `pip "
        "install 'bcrdist[wandb]'`): `offline` never touches the network (upload later with `wandb sync "
        "RUN/wandb/offline-run-*`), `online` streams to the W&B server; `RUN/wandb_run.json` keeps the W&B run's "
        "id, so a resumed or requeued training continues that run (`--restart` starts a new one)")
    wandb_project: str = setting("bcrdist", help="the W&B project of the run")
    wandb_entity: str | None = setting(None, help="the W&B entity (user or team) of the run; null = the default "
                                       "entity of your W&B login")


@dataclass
class TrainConfig:
    run_dir: str = setting("runs/bcrnet", help="run directory: `config.yaml`, `train.log`, `metrics.jsonl`, "
                           "`results.json`, `checkpoints/`; its name holds no control character (tab included)")
    seed: int = setting(0, help="model initialisation, data order and noise (data order and noise depend only on "
                        "(seed, epoch, sample))", low=0, high=SEED_LIMIT)
    data: DataConfig = section(DataConfig, help="the data set, its splits and the input/target preprocessing")
    model: ModelConfig = section(ModelConfig, help="the network (`model.type`, any registered one); input/output "
                                 "sizes come from the data")
    optim: OptimConfig = section(OptimConfig, help="the optimizer")
    schedule: ScheduleConfig = section(ScheduleConfig, help="the original's recipe of stages, model selection "
                                       "and stopping (see `bcrdist/train/schedule.py`)")
    checkpoint: CheckpointConfig = section(CheckpointConfig, help="when `last.pt` is written and where a run "
                                           "resumes from")
    runtime: RuntimeConfig = section(RuntimeConfig, help="device, precision, compilation, threads and signals")
    distributed: DistributedConfig = section(DistributedConfig, help="process-group timeouts: how long a rank "
                                             "waits for a rank that does not answer")
    logging: LoggingConfig = section(LoggingConfig, help="experiment logs beyond `train.log`, `metrics.jsonl` and "
                                     "`metrics.csv`")
    results_table: str | None = setting("results.tsv", help="one tab-separated row per run appended here "
                                        "(relative paths: next to `run_dir`), like the original's "
                                        "`tr2dInvNoise.txt`; null for none")

    def validate(self):
        check_ranges(self)
        # the run directory's name goes into train.log, the results table (tab-separated), batch scripts and
        # shell commands: a control character, tab and newline included, would split or forge their lines
        bad = next((ch for ch in self.run_dir if unicodedata.category(ch) == "Cc"), None)
        if bad is not None:
            raise ConfigError(f"run_dir: {shown(self.run_dir)} contains the control character {bad!r}; a run "
                              f"directory's name may hold none")
