"""The training loop: the original BCR-Net recipe under DDP, readable top to bottom.

`train(cfg)` initialises the process group, has rank 0 make the run plan (`bcrdist.train.plan`: every
decision the config leaves open, and every refusal, before the run directory is claimed), builds data, model
and optimizer from it, then runs its stages with the SaveBestModel rules of `bcrdist.train.best_model`. Every decision
(improvement, reduce-LR, stop, NaN rollback, preemption) is taken from values that are identical on all
ranks (all-reduced errors, or rank 0's decision broadcast), so every rank reaches every collective.
Rank 0 alone writes files; checkpoints are atomic, and a failed write (disk full, I/O error) is broadcast so
that every rank stops with the same one-line error, the previous files intact. The run's state is the parts
registered with the `Checkpointer` (`bcrdist.train.state`): `last.pt` is their state, `best.pt` a model
checkpoint. `train(cfg)` first claims the run directory (`bcrdist.train.run_dir`: one run per directory,
locked for the run's lifetime, resumed only with a config that keeps what the run is).

Nothing non-finite passes silently: a non-finite loss whose batch holds non-finite inputs or targets stops
the run naming the step and the samples (a DataError), one whose data are finite rolls back
(`schedule.max_nan_failures`); a non-finite validation (or test) error stops the run naming the split and
the samples, so a run never ends "successfully" with stale weights (only `schedule.keras_compat`, whose best
error starts at 1 as in Keras, may end with the initial weights, and says so in train.log).
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

from bcrdist import __version__
from bcrdist.config import to_dict
from bcrdist.data.format import read_manifest
from bcrdist.distributed import DistContext, init_distributed, shutdown_distributed
from bcrdist.distributed.collective import on_main
from bcrdist.errors import BcrdistError, DataError, HangError
from bcrdist.fileio import atomic_write_bytes, atomic_write_json, json_safe, open_nofollow
from bcrdist.metrics import PIXEL_MAX, summarize
from bcrdist.models.checkpoint import load_weights, remove_stale_temporaries, save_model
from bcrdist.train.best_model import BestModelTracker
from bcrdist.train.config import TrainConfig
from bcrdist.train.evaluation import NonFiniteSamples, check_finite, evaluate_model, gather, sample_list
from bcrdist.train.hang import hang_message
from bcrdist.train.model_setup import build_model, check_initial_weights
from bcrdist.train.plan import RunPlan, make_training_plan
from bcrdist.train.physics_check import data_grid
from bcrdist.train.provenance import run_provenance
from bcrdist.train.preemption import PreemptionFlag, exit_code, requeue_slurm_job
from bcrdist.train.process_setup import configure_process
from bcrdist.train.run_log import RunLogger
from bcrdist.train.schedule import Stage
from bcrdist.train.run_dir import Claim, claim_run_dir
from bcrdist.train.state import (BestWeights, Checkpointer, ModelWeights, OptimizerHolder, ProgressCounters,
                                 RandomState, write_failure)
from bcrdist.train.training_data import TrainingData


class TrainingDiverged(BcrdistError):
    """Too many non-finite losses, or non-finite evaluation errors: training stopped, best weights kept."""


class RunWriteError(BcrdistError):
    """A file of the run could not be written (disk full, I/O error); the previous files are intact."""


def seed_everything(seed: int) -> None:
    """Seeds the model initialisation; data order and noise are functions of (seed, epoch, sample) alone."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class Trainer:
    """Holds the run's state, built from the run plan; `run()` executes the schedule and returns the results
    dict."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, plan: RunPlan):
        self.cfg, self.ctx, self.plan = cfg, ctx, plan
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        rt = cfg.runtime
        self.host_memory = configure_process(rt, ctx.device, ctx.env.local_world_size)
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.ckpt_dir)
        ctx.barrier()
        lg = cfg.logging
        self.log = RunLogger(self.run_dir, enabled=ctx.is_main, every_steps=rt.log_every_steps,
                             tensorboard=lg.tensorboard, wandb=lg.wandb, wandb_project=lg.wandb_project,
                             wandb_entity=lg.wandb_entity, config=to_dict(cfg))
        seed_everything(cfg.seed)

        self.data = TrainingData(cfg, ctx, plan)
        grid = data_grid(self.data.manifest)
        self.provenance = run_provenance(cfg, self.data.manifest.dataset_id, grid and grid.to_record())
        self.model = build_model(plan.model, self.data, ctx)
        self.model.to(ctx.device)
        ctx.broadcast_module(self.model)
        self.n_params = sum(p.numel() for p in self.model.parameters())

        self.ddp = DDP(self.model) if ctx.distributed else self.model
        use_compile = rt.compile == "true" or (rt.compile == "auto" and ctx.device.type == "cuda")
        self.forward = torch.compile(self.ddp) if use_compile else self.ddp
        self.amp_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(rt.precision)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=rt.precision == "16-mixed")

        if plan.model.initial_weights:
            self._load_initial_weights(plan.model.initial_weights)
        self.stages = list(plan.schedule.stages)
        self.tracker = BestModelTracker(test_weight=self.selection_weight(self.stages[0]), **plan.schedule.tracker)
        self.optim = OptimizerHolder(cfg, self.model, self.stages[0].lr)
        self.best = BestWeights(self.model)
        self.progress = ProgressCounters(epoch=self.stages[0].start_epoch, lr=self.stages[0].lr)
        self.state = Checkpointer({"model": ModelWeights(self.model), "best_model": self.best,
                                   "optimizer": self.optim, "scaler": self.scaler, "progress": self.progress,
                                   "tracker": self.tracker, "data": self.data, "reader": self.data.position,
                                   "rng": RandomState()}, ctx)
        self.stop_reason = ""
        self.stop_requested = False
        self.preempt: PreemptionFlag | None = None

    # ------------------------------------------------------------------ checkpoints
    def _load_initial_weights(self, path: str) -> None:
        if path.endswith(".h5"):
            from bcrdist.models.keras import load_keras_weights
            load_keras_weights(self.model.net, path)
        else:
            load_weights(self.model, path, "schedule.initial_weights")
        self.model.to(self.ctx.device)

    def save(self, name: str) -> None:
        """Rank 0 writes the training state to checkpoints/NAME.pt atomically; all ranks wait for it."""
        self.state.save(self.ckpt_dir / f"{name}.pt", world_size=self.ctx.world_size, config=to_dict(self.cfg),
                        model_config=self.model.record(), provenance=self.provenance)

    def written_by_rank0(self, path: Path, write) -> None:
        """Rank 0 calls `write()`; a failure to write `path` reaches every rank as one RunWriteError."""
        def attempt() -> None:
            try:
                write()
            except OSError as exc:
                raise RunWriteError(write_failure(path, exc)) from None

        on_main(self.ctx, attempt)

    def save_best(self) -> None:
        """The model as it is now is the best: kept in memory and written as checkpoints/best.pt."""
        self.best.keep()
        path = self.ckpt_dir / "best.pt"
        self.written_by_rank0(path, lambda: save_model(path, self.model, config=to_dict(self.cfg),
                                                       tracker=self.tracker.state_dict(),
                                                       progress=self.progress.state_dict(),
                                                       provenance=self.provenance))

    def resume(self, path: Path) -> None:
        ck = self.state.load(path)
        if ck.get("world_size") != self.ctx.world_size:
            self.log.info(f"note: {path} was written with world size {ck.get('world_size')}, "
                          f"resuming with {self.ctx.world_size}")
        p = self.progress
        if p.stage < len(self.stages):
            self.use_selection_weight(self.stages[p.stage])
            where = f"stage {self.stages[p.stage].name}"
        else:
            where = "the end of the schedule"
        self.log.info(f"resumed from {path} at {where}, epoch {p.epoch}, batch {self.data.position.batch}, "
                      f"step {p.step}")

    # ------------------------------------------------------------------ evaluation
    def selection_weight(self, stage: Stage) -> float:
        """The tracker's slot weight in `stage` (the plan's rule)."""
        return self.plan.schedule.selection_weight(stage)

    def use_selection_weight(self, stage: Stage) -> None:
        w = self.selection_weight(stage)
        if w != self.tracker.test_weight:
            self.tracker.set_test_weight(w)

    def evaluate(self, phase: str, when: str) -> dict:
        """Exact errors over the validation set (output and auxiliary head) and, when fine-tuning with a
        training slot, over the fixed training subset: {"out", "aux", "train" (or None)}. A non-finite error
        stops the run (`check_finite`); `when` says where in the run, for that message."""
        metric = self.data.choice.metric
        val = self.measure("val", (metric,), ("out", "aux"), when)
        train = None
        if phase == "finetune" and self.tracker.test_weight < 1:
            train = self.measure("train_subset", (metric,), ("out",), when)
            train = train["out"][metric] if train["out"][metric]["count"] else None
        return {"out": val["out"][metric], "aux": val["aux"][metric], "train": train}

    def measure(self, split: str, metrics, heads, when: str, limit="n_valid") -> dict:
        """`evaluate_model` on `split`, refusing non-finite errors with one line naming the split, the samples
        and what the best weights are. Every rank evaluates with rank 0's buffers: a BatchNorm's running
        statistics follow each rank's own batches in training, and rank 0's are the model's (DDP's rule, what
        best.pt holds), so the best weights kept after this evaluation are the same on every rank."""
        self.ctx.broadcast_buffers(self.model)
        bad = NonFiniteSamples()
        stats = evaluate_model(self.model, self.data.eval_batches(split, limit=limit), self.ctx, metrics,
                               heads=heads, on_batch=bad)
        best = (f"best weights (epoch {self.tracker.best_epoch}) in {self.ckpt_dir / 'best.pt'}"
                if (self.ckpt_dir / "best.pt").is_file() else "no best model was saved")
        name = {"val": self.cfg.data.val_split, "test": self.cfg.data.test_split,
                "train_subset": self.cfg.data.train_split}[split]
        check_finite(stats, bad, self.ctx, f"{self.cfg.data.path}: {split} split {name!r} {when}",
                     data_error=DataError, model_error=TrainingDiverged, after=f"; {best}")
        return stats

    def judge(self, stage: Stage, errors: dict, epoch: int, at_start: bool):
        """Compare this phase's slots with the best model; returns (improved, decision or None)."""
        if stage.phase == "pretrain":
            a, b = errors["out"]["mean"], errors["aux"]["mean"]
        else:
            a = errors["train"]["mean"] if errors["train"] else errors["out"]["mean"]
            b = errors["out"]["mean"]
        improved = self.tracker.compare_with_best(epoch, a, b, at_stage_start=at_start)
        if improved:
            self.save_best()
        decision = None if at_start else self.tracker.decide(epoch, self.progress.lr)
        return improved, decision

    # ------------------------------------------------------------------ training
    def train_step(self, stage: Stage, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimizer step on this rank's batch; returns the global mean loss (NaN if any rank's is) and
        sets `stop_requested` when any rank received the preemption signal."""
        w_out, w_aux = self.cfg.schedule.loss_weights
        optimizer = self.optim.optimizer
        amp = (torch.autocast(self.ctx.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext())
        with amp:
            if stage.phase == "pretrain":
                out, aux = self.forward(x, return_aux=True)
                loss = w_out * F.mse_loss(out.float(), y) + w_aux * F.mse_loss(aux.float(), y)
            else:
                loss = F.mse_loss(self.forward(x).float(), y)
        # one small all-reduce per step carries the loss (NaN anywhere → NaN everywhere) and the preemption flag
        flag = 1.0 if self.preempt.requested else 0.0
        both = self.ctx.all_reduce_sum(torch.stack([loss.detach().double(), loss.new_tensor(flag, dtype=torch.float64)]))
        global_loss, self.stop_requested = float(both[0]) / self.ctx.world_size, bool(both[1] > 0)
        if not math.isfinite(global_loss):
            optimizer.zero_grad(set_to_none=True)
            return global_loss
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        self.ctx.set_timeout(self.cfg.distributed.timeout_s)    # start-up is over: the shorter timeout from now on
        return global_loss

    def check_batch(self, stage: Stage, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> None:
        """After a non-finite loss (every rank calls this): a batch holding non-finite inputs or targets on any
        rank is corrupt data, not divergence; stop naming the step and the samples."""
        bad = {}
        for what, t in (("inputs", x), ("targets", y)):
            rows = ~torch.isfinite(t).flatten(1).all(dim=1)
            bad[what] = index[rows.cpu()].tolist()
        found = {what: sorted(i for part in gather(self.ctx, bad[what]) for i in part) for what in bad}
        found = {what: ids for what, ids in found.items() if ids}
        if found:
            what = " and ".join(f"{what} of samples {sample_list(ids)}" for what, ids in found.items())
            raise DataError(f"{self.cfg.data.path}: non-finite training {what} (step {self.progress.step + 1}, "
                            f"{stage.name}, epoch {self.progress.epoch + 1}); `bcrdist verify "
                            f"{self.cfg.data.path}` checks the data set")

    def handle_nan(self, stage: Stage, index: torch.Tensor) -> None:
        """Roll back to the best weights with a lower lr and fresh optimizer moments, or give up."""
        p = self.progress
        p.nan_failures += 1
        limit = self.cfg.schedule.max_nan_failures
        where = f"at step {p.step + 1} (this rank's batch: samples {sample_list(index.tolist())})"
        if p.nan_failures > limit:
            raise TrainingDiverged(f"training diverged: {p.nan_failures} non-finite losses, the last {where} "
                                   f"(limit schedule.max_nan_failures = {limit}); best weights kept in "
                                   f"{self.ckpt_dir / 'best.pt'}")
        self.best.restore()
        p.lr *= self.cfg.schedule.nan_lr_factor
        self.optim.reset(p.lr)
        self.log.info(f"non-finite loss in {stage.name} {where}: rolled back to the best "
                      f"weights, lr → {p.lr:.3g} ({p.nan_failures}/{limit})")

    def close(self) -> None:
        """Drop the DDP wrapper: it holds the process group, which `shutdown_distributed` then ends (its threads)."""
        self.ddp = self.forward = self.model

    def run(self, notes: tuple[str, ...] | list[str] = ()) -> dict:
        """Train (resuming per `checkpoint.resume`) and return the results, or, when a signal stopped the run,
        {"status": "preempted" | "interrupted", "signal", "requeued", "step", "message" (rank 0)}. `notes`:
        lines for train.log (what the run-directory claim found)."""
        cfg, ctx = self.cfg, self.ctx
        last = self.ckpt_dir / "last.pt"
        resume = cfg.checkpoint.resume
        if resume == "auto" and ctx.broadcast_object(last.is_file()):
            self.resume(last)
        elif resume not in (None, "auto"):
            self.resume(Path(resume))
        # every split's shards before the first step (a bad test shard would otherwise show after the training);
        # rank 0 checks, each shard hashed once in its process, and every rank stops with its one-line error
        on_main(ctx, self.data.check_splits)
        path = self.run_dir / "config.yaml"
        # the config the run started with (a run resumed from elsewhere starts here with this one)
        if ctx.broadcast_object(not path.is_file()):
            text = yaml.safe_dump(to_dict(cfg), sort_keys=False).encode()
            self.written_by_rank0(path, lambda: atomic_write_bytes(path, text))
        self.log.info(f"bcrdist {__version__}: {ctx.world_size} rank(s) via {ctx.env.method} on {ctx.device}; "
                      f"{self.model.model_type}: {self.n_params:,} parameters ({self.model.net.summary}); "
                      f"{len(self.stages)} stages; data {cfg.data.path} (train {self.data.n_train}, "
                      f"val {self.data.n_val}); freed host memory: {self.host_memory}")
        for note in notes:
            self.log.info(note)
        t_start = time.time()
        rt = cfg.runtime
        self.preempt = PreemptionFlag(("USR2" if rt.requeue_signal.upper() == "USR2" else rt.requeue_signal, "TERM"),
                                      interrupt=True, announce=ctx.is_main)
        try:
            try:
                on_main(ctx, self.log.start)    # a W&B run that cannot start stops every rank, before training
                outcome = self._run_stages()
            finally:
                self.preempt.restore()
            if not isinstance(outcome, dict):
                self.best.restore()
                outcome = self.finish(time.time() - t_start)
        except BaseException:
            # the trackers close on every exit path, after the final metrics; W&B marks this run failed
            self.log.close(failed=True)
            raise
        self.log.close()
        return outcome

    def _start_stage(self, stage: Stage) -> None:
        """A stage's start: optimizer moments reset at a phase change (or every stage with
        `optim.reset_each_stage`), the phase's slot weighting, the patience window, the start evaluation."""
        p = self.progress
        prev = self.stages[p.stage - 1] if p.stage else None
        if prev is not None and (prev.phase != stage.phase or self.cfg.optim.reset_each_stage):
            self.optim.reset(stage.lr)
        self.use_selection_weight(stage)
        p.lr = stage.lr
        self.tracker.start_stage(stage.start_epoch)
        errors = self.evaluate(stage.phase, f"at the start of stage {stage.name}")
        self.judge(stage, errors, stage.start_epoch, at_start=True)
        p.epoch, p.stage_started = stage.start_epoch, True
        self.log.info(f"stage {stage.name}: global batch {stage.global_batch}, lr {stage.lr:.3g}, "
                      f"epochs [{stage.start_epoch}, {stage.end_epoch}); start error {errors['out']['mean']:.4g}")

    def _run_stages(self) -> str | dict:
        """The schedule from where the progress counters are: "complete", "max_steps", or the stop result
        of a signal (`_stop`)."""
        cfg, ctx, p = self.cfg, self.ctx, self.progress
        max_steps = cfg.schedule.max_steps
        while p.stage < len(self.stages):
            stage = self.stages[p.stage]
            per_rank = stage.global_batch // ctx.world_size
            if not p.stage_started:
                self._start_stage(stage)
            self.optim.set_lr(p.lr)
            stop_stage = False
            while p.epoch < stage.end_epoch and not stop_stage:
                epoch = p.epoch
                t0, wait, n_samples, losses = time.time(), 0.0, 0, []
                # resumed at the limit: train no further step (and take no batch from the reader)
                at_limit = max_steps is not None and p.step >= max_steps
                batches = iter(()) if at_limit else self.data.train_batches(epoch, per_rank)
                left = 0 if at_limit else self.data.train_steps(per_rank) - self.data.position.consumed(epoch)
                bar = self.log.progress(left, f"{stage.name} epoch {epoch + 1}")
                t_wait = time.time()
                for x, y, index in batches:
                    wait += time.time() - t_wait
                    loss = self.train_step(stage, x, y)
                    self.log.step_done(bar, loss, p.step + 1)
                    if not math.isfinite(loss):
                        self.check_batch(stage, x, y, index)
                        self.handle_nan(stage, index)
                        self.optim.set_lr(p.lr)
                    else:
                        losses.append(loss)
                    p.step += 1
                    n_samples += stage.global_batch
                    if p.step % cfg.checkpoint.every_steps == 0:
                        self.save("last")
                    if self.stop_requested:
                        bar.close()
                        return self._stop()
                    if max_steps is not None and p.step >= max_steps:
                        break
                    t_wait = time.time()
                # over once its last batch is consumed (max_steps may stop on it): a resume must not log it again
                if self.data.position.consumed(epoch) >= self.data.train_steps(per_rank):
                    p.epoch += 1
                bar.close()
                elapsed = time.time() - t0
                errors = self.evaluate(stage.phase, f"after epoch {epoch + 1} ({stage.name}, step {p.step})")
                improved, decision = self.judge(stage, errors, epoch, at_start=False)
                decision = ctx.broadcast_object(decision)
                if decision.reduce_lr:
                    self.best.restore()
                    p.lr = decision.new_lr
                    self.optim.set_lr(p.lr)
                    self.log.info(f"reduce lr to {p.lr:.3g} and reload the best weights")
                self.log.metrics({
                    "phase": stage.phase, "stage": stage.index, "epoch": epoch + 1, "step": p.step,
                    "lr": p.lr, "global_batch": stage.global_batch,
                    "train_loss": float(np.mean(losses)) if losses else float("nan"),
                    "val_error": errors["out"]["mean"], "val_error_aux": errors["aux"]["mean"],
                    "val_error_max": errors["out"]["max"],
                    "train_subset_error": errors["train"]["mean"] if errors["train"] else None,
                    "best_error": self.tracker.best_err, "improved": improved,
                    "samples_per_s": n_samples / max(elapsed, 1e-9), "data_wait_share": wait / max(elapsed, 1e-9),
                    "wall_time": time.time(),
                })
                if decision.stop:
                    self.log.info(f"stage {stage.name}: early stop after epoch {epoch + 1}: {decision.reason}")
                    stop_stage = True
                elif max_steps is not None and p.step >= max_steps:
                    self.stop_reason = f"reached schedule.max_steps = {max_steps}"
                    self.save("last")
                    return "max_steps"
            # Keras semantics: the next stage starts at this stage's planned end, from the best weights
            self.best.restore()
            p.stage, p.epoch, p.stage_started = p.stage + 1, stage.end_epoch, False
            self.save("last")
            # an early stop at the limit ends its stage first, so the resumed run does not train that stage on
            if max_steps is not None and p.step >= max_steps:
                self.stop_reason = f"reached schedule.max_steps = {max_steps}"
                return "max_steps"
        self.stop_reason = self.stop_reason or "schedule complete"
        return "complete"

    def _stop(self) -> dict:
        """A signal reached some rank: save last.pt, then requeue (SIGUSR2/SIGTERM under Slurm or submitit) or
        not (SIGINT, or outside Slurm). Every rank returns the same outcome (rank 0's, broadcast)."""
        ctx, p = self.ctx, self.progress
        # the ranks agreed to stop; which signal: the largest number any rank received (a requeue signal,
        # 12 or 15, outranks Ctrl-C, 2)
        name = signal_name(int(ctx.all_reduce_max(self.preempt.signal_number)))
        self.log.info(f"received SIG{name}: saving last.pt at step {p.step}")
        self.save("last")
        outcome = "interrupted"
        if name != "INT":
            if ctx.is_main:
                if os.environ.get("SUBMITIT_EXECUTOR"):
                    outcome = "submitit"
                else:
                    outcome = "requeued" if requeue_slurm_job(self.log.info) else "not requeued"
            outcome = ctx.broadcast_object(outcome)
            if outcome == "submitit" and ctx.is_main:
                self.log.info("handing over to submitit to requeue the job")
                if not self.preempt.forward_to_previous():     # submitit: checkpoint(), requeue, exit
                    outcome = "not requeued"
        requeued = outcome in ("requeued", "submitit")
        result = {"status": "interrupted" if name == "INT" else "preempted", "signal": name, "requeued": requeued,
                  "step": p.step}
        if ctx.is_main and not requeued:
            why = "interrupted" if name == "INT" else "not requeued (not a Slurm job, or the requeue failed)"
            result["message"] = (f"stopped by SIG{name} at step {p.step}: {why}; the state is in "
                                 f"{self.ckpt_dir / 'last.pt'}: continue with --resume auto "
                                 f"(exit status {exit_code(name)})")
            self.log.info(result["message"])
        return result

    # ------------------------------------------------------------------ the end
    def finish(self, wall: float) -> dict:
        """Final metrics of the best model on the validation and test splits (also to the experiment
        trackers), results.json, results table."""
        if self.ctx.is_main and not (self.ckpt_dir / "best.pt").is_file():
            # only keras_compat gets here (its best error starts at 1; a non-finite evaluation stops the run)
            self.log.info(f"note: no evaluation improved on the starting best error {self.tracker.best_err:.4g} "
                          f"(schedule.keras_compat): the final model is the initial one, as in Keras, and no "
                          f"best.pt was written")
        errors = {split: summarize(self.measure(split, self.data.choice.reported, ("out",), "of the best model",
                                                limit=None)["out"], pixel_max=PIXEL_MAX)
                  for split in ("val", "test") if self.data.has_split(split)}
        results = {
            "run_dir": str(self.run_dir), "data": self.cfg.data.path, "parameters": self.n_params,
            "world_size": self.ctx.world_size, "steps": self.progress.step, "epochs": self.progress.epoch,
            "stop_reason": self.stop_reason, "best_selection_error": self.tracker.best_err,
            "best_epoch": self.tracker.best_epoch, "errors": errors, "wall_time_s": wall,
            "n_train": self.data.n_train, "provenance": self.provenance,
            "selection_metric": self.data.choice.metric, "target": self.data.choice.layout.target_kind,
            "model": self.model.summary(), "noise": self.cfg.data.noise_record(),
        }
        # before results.json: a run whose trackers failed here is not complete, and a resume retries them
        on_main(self.ctx, lambda: self.log.final_metrics(errors, self.progress.step))
        path = self.run_dir / "results.json"
        self.written_by_rank0(path, lambda: atomic_write_json(path, json_safe(results)))
        if self.cfg.results_table:
            table = self.results_table_path()
            self.written_by_rank0(table, lambda: self.append_results_row(table, results))
        if self.ctx.is_main:
            metric = self.data.choice.metric
            test = errors.get("test", errors.get("val", {})).get(metric, {})
            self.log.info(f"done: {self.stop_reason}; test {METRIC_NAMES[metric]} "
                          f"{test.get('mean', float('nan')):.4f}; results in {path}")
        self.ctx.barrier()
        return results

    def results_table_path(self) -> Path:
        path = Path(self.cfg.results_table)
        return path if path.is_absolute() else self.run_dir.parent / path

    def append_results_row(self, path: Path, results: dict) -> None:
        """One tab-separated row per run, like the original's tr2dInvNoise.txt (header on creation); a failed
        append is cut back to the table's previous length, so no half row stays."""
        test = results["errors"].get("test", {}).get(self.data.choice.metric, {})
        cfg = self.cfg
        row = [cfg.data.path, str(self.run_dir), cfg.model.alpha, cfg.model.n_cnn, cfg.model.n_cnn3,
               cfg.schedule.batch_size, self.data.n_train, test.get("count", 0), self.n_params,
               cfg.schedule.epochs, results["epochs"], cfg.data.noise, results["best_selection_error"],
               test.get("mean", float("nan")), test.get("max", float("nan")), test.get("std", float("nan")),
               cfg.model.type, cfg.data.noise_model, *reversed(cfg.data.evaluation_noise())]
        header = ["data", "run_dir", "alpha", "n_cnn", "n_cnn3", "batch_size", "n_train", "n_test", "parameters",
                  "epoch_unit", "epochs_run", "noise", "best_val_error", "test_error_mean", "test_error_max",
                  "test_error_std", "model_type", "noise_model", "eval_noise", "eval_noise_model"]
        text = ("" if path.exists() else "\t".join(header) + "\n") + "\t".join(str(v) for v in row) + "\n"
        data = memoryview(text.encode())
        fd = open_nofollow(path, "append")
        try:
            size = os.fstat(fd).st_size
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


METRIC_NAMES = {"weighted": "radius-weighted relative error", "rel_l2": "relative L2 error",
                "rel_l1": "relative L1 error", "psnr": "PSNR (dB)"}


def signal_name(number: int) -> str:
    """2 → 'INT'."""
    return signal.Signals(number).name.removeprefix("SIG")


def claim(cfg: TrainConfig, ctx: DistContext, restart: bool) -> Claim:
    """Rank 0 claims the run directory (`claim_run_dir`) and holds its lock; its outcome, or its error, reaches
    every rank."""
    held: list[Claim] = []

    def claim_on_main() -> dict:
        held.append(claim_run_dir(cfg, restart))
        return {"complete": held[0].complete, "stop_reason": held[0].stop_reason, "resume": held[0].resume}

    outcome = on_main(ctx, claim_on_main)
    found = held[0] if held else Claim(**outcome)
    if found.resume is not None:
        cfg.checkpoint.resume = found.resume
    return found


def train(cfg: TrainConfig, restart: bool = False) -> dict:
    """Run training in this process (one rank of whatever launched it), holding the run directory for the
    run's lifetime. `restart`: move a run already in `cfg.run_dir` aside and start over. A finished run
    given `checkpoint.resume = auto` returns {"status": "complete", "stop_reason", "message"} untouched."""
    ctx = init_distributed(cfg.runtime.device, cfg.distributed.init_timeout_s,
                           nccl_trace_dir=Path(cfg.run_dir) / "nccl_trace")
    held = trainer = None
    try:
        plan = on_main(ctx, lambda: check_initial_weights(         # every refusal before the claim: RUN untouched
            make_training_plan(cfg, read_manifest(cfg.data.path), ctx.world_size)))
        held = claim(cfg, ctx, restart)
        if ctx.nccl_trace_dir is not None:      # --restart moved RUN, with the folder made at start-up, aside
            ctx.nccl_trace_dir.mkdir(parents=True, exist_ok=True)
        if held.complete:
            if ctx.is_main:
                print(held.complete, flush=True)
            ctx.barrier()
            return {"status": "complete", "stop_reason": held.stop_reason, "message": held.complete}
        trainer = Trainer(cfg, ctx, plan)
        return trainer.run(notes=held.notes)
    except RuntimeError as exc:
        # a failed collective (gloo raises once the timeout has passed): name the ranks that stopped answering
        silence = ctx.silence()
        if silence is None:
            raise
        raise HangError(hang_message(cfg, ctx, silence, trainer.progress.step if trainer else 0)) from exc
    finally:
        if trainer is not None:
            trainer.close()
        if held is not None:
            held.release()
        shutdown_distributed()
        sys.stdout.flush()
