"""Unit tests of the training building blocks: the SaveBestModel state machine (early_stop), the stage schedule,
checkpoints and the error metrics (including an exact 2-process gloo reduction).

BestModelTracker is compared with `KerasSaveBestModel` below, an independent transcription of the original
`mnn/callback.py` arithmetic (reference original-code.md §4) driven the way the original script drove it
(§5.7: one `fit` per stage, `best_epoch_update ← n_pre` between stages, the same callback object for both
phases, the fine-tuning phase switching to test_weight 1).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import socket
import stat
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bcrdist.distributed.launch_env import LaunchEnv
from bcrdist.distributed.process_group import DistContext
from bcrdist.errors import DataError
from bcrdist.models import checkpoint as ckpt
from bcrdist.models.checkpoint import (atomic_save, load_checkpoint, load_model_state, model_state,
                                      remove_stale_temporaries, strip_prefixes, unwrap)
from bcrdist.train.best_model import BestModelTracker
from bcrdist.metrics import (ErrorAccumulator, per_sample_error, psnr, relative_l2,
                                   weighted_relative_error)
from bcrdist.train.schedule import build_stages, initial_value_stage


# =====================================================================================================
# Reference: the original SaveBestModel (mnn/callback.py), transcribed from §4, printing/saving omitted.
# =====================================================================================================
class KerasSaveBestModel:
    """The original callback's arithmetic.

    `init_best` is the initial best error of both slots (original: 1). `stage_start_epoch0=True` evaluates at
    the start of a fit as the original did (`compare_with_best_model(-1)`, i.e. "epoch 0"); False models
    bcrdist's documented fix, where that evaluation counts as the stage's start epoch.
    """

    def __init__(self, patience=10000, test_weight=0.5, reduceLR=False, min_lr=None, patience_lr=None,
                 factor=0.5, init_best=1.0, stage_start_epoch0=True):
        self.best_epoch = 0
        self.best_epoch_update = 0
        self.best_err_train = init_best
        self.best_err_test = init_best
        self.test_weight = min(max(test_weight, 0), 1)
        self.patience = patience
        self.patience_lr = patience_lr or patience // 2
        self.reduceLR = reduceLR
        self.min_lr = min_lr
        self.factor = factor
        self.err_history = []
        self.stop_epoch = 0
        self.stop_training = False
        self.stage_start_epoch0 = stage_start_epoch0
        self.lr = None
        self.improved = False

    # -- Keras hooks -------------------------------------------------------------------------------
    def on_train_begin(self, errs, initial_epoch):
        self.compare_with_best_model(-1 if self.stage_start_epoch0 else initial_epoch - 1, errs)
        if self.reduceLR:
            self.patience_lr = min(self.patience_lr, self.patience)

    def on_epoch_end(self, epoch, errs):
        self.compare_with_best_model(epoch, errs)
        if (self.reduceLR and (epoch + 1 - self.best_epoch_update) >= self.patience_lr
                and self.lr > self.min_lr + 1e-7):
            self.lr = max(self.lr * self.factor, self.min_lr)
            self.best_epoch = self.best_epoch_update = epoch + 1
        if (epoch + 1 - self.best_epoch_update) >= self.patience:
            self.stop_training = True
            self.stop_epoch = epoch

    def compare_with_best_model(self, epoch, errs):
        err_train, err_test = (np.asarray(e, dtype=np.float64) for e in errs)
        mean_train, mean_test = float(np.mean(err_train)), float(np.mean(err_test))
        self.err_history.append([epoch + 1, mean_train, mean_test])
        tw = self.test_weight
        err_new = mean_train * (1 - tw) + mean_test * tw
        if math.isinf(self.best_err_train):          # +inf start (bcrdist default): anything finite improves
            better = True
        else:
            err_old = self.best_err_train * (1 - tw) + self.best_err_test * tw
            better = err_old > err_new and abs(err_new / err_old - 1) > 1e-3
        self.improved = better
        if better:
            self.best_epoch = self.best_epoch_update = epoch + 1
            self.best_err_train, self.best_err_test = mean_train, mean_test


def run_reference(stages, errors, *, patience, keras, reduce_lr=False, patience_lr=None, factor=0.5,
                  min_lr=1e-5, test_weights=(0.0, 1.0)):
    """The original script's stage loop; `stages` = [(phase_index, start, end, lr)].
    Returns the trace [(kind, epoch, improved, best_epoch, best_epoch_update, lr, stop)] and the callback."""
    cb = KerasSaveBestModel(patience=patience, test_weight=test_weights[0], reduceLR=reduce_lr, min_lr=min_lr,
                            patience_lr=patience_lr, factor=factor, init_best=1.0 if keras else math.inf,
                            stage_start_epoch0=keras)
    trace = []
    prev_phase = None
    for si, (phase, start, end, lr) in enumerate(stages):
        if prev_phase is not None and phase != prev_phase:
            cb.test_weight = test_weights[1]
        prev_phase = phase
        cb.best_epoch_update = start                     # the script: best_epoch_update ← n_pre
        cb.lr = lr
        cb.stop_training = False
        cb.on_train_begin(errors[("start", si)], start)
        trace.append(("start", start, cb.improved, cb.best_epoch, cb.best_epoch_update, cb.lr, False))
        for epoch in range(start, end):
            cb.on_epoch_end(epoch, errors[epoch])
            trace.append(("epoch", epoch, cb.improved, cb.best_epoch, cb.best_epoch_update, cb.lr,
                          cb.stop_training))
            if cb.stop_training:
                break
    return trace, cb


def run_tracker(stages, errors, *, patience, keras, reduce_lr=False, patience_lr=None, factor=0.5,
                min_lr=1e-5, test_weights=(0.0, 1.0)):
    """The same loop with BestModelTracker, used the way bcrdist's trainer uses it."""
    tr = BestModelTracker(patience=patience, test_weight=test_weights[0], reduce_lr=reduce_lr,
                          patience_lr=patience_lr, factor=factor, min_lr=min_lr, keras_compat=keras)
    trace = []
    prev_phase = None
    for si, (phase, start, end, lr) in enumerate(stages):
        if prev_phase is not None and phase != prev_phase:
            tr.set_test_weight(test_weights[1])
        prev_phase = phase
        tr.start_stage(start)
        improved = tr.evaluate(start, *errors[("start", si)], at_stage_start=True)
        trace.append(("start", start, improved, tr.best_epoch, tr.best_epoch_update, lr, False))
        for epoch in range(start, end):
            improved = tr.evaluate(epoch, *errors[epoch])
            d = tr.after_epoch(epoch, lr)
            if d.reduce_lr:
                assert d.new_lr is not None
                lr = d.new_lr
            trace.append(("epoch", epoch, improved, tr.best_epoch, tr.best_epoch_update, lr, d.stop))
            if d.stop:
                break
    return trace, tr


def random_errors(rng, stages, negative=False):
    """Per-evaluation (a, b) means: noisy descent with plateaus, tiny (<0.1 %) gains and setbacks."""
    errors = {}
    level = -20.0 if negative else 0.9
    keys = []
    for si, (_, start, end, _) in enumerate(stages):
        keys.append(("start", si))
        keys.extend(range(start, end))
    for key in keys:
        r = rng.random()
        if r < 0.3:
            step = -abs(level) * rng.uniform(0.002, 0.05)        # clear improvement
        elif r < 0.55:
            step = -abs(level) * rng.uniform(0.0, 0.0009)       # gain below the 0.1 % threshold
        elif r < 0.8:
            step = abs(level) * rng.uniform(0.0, 0.03)          # setback
        else:
            step = 0.0                                          # plateau
        level += step
        a = level * (1 + rng.uniform(-0.01, 0.01))
        b = level * (1 + rng.uniform(-0.01, 0.01))
        errors[key] = (a, b)
    return errors


TWO_PHASE = [(0, 0, 8, 1e-3), (0, 8, 12, 1e-3), (0, 12, 16, 3e-4), (1, 16, 24, 1e-3), (1, 24, 28, 1e-4)]


@pytest.mark.parametrize("keras", [True, False], ids=["keras_compat", "default"])
@pytest.mark.parametrize("negative", [False, True], ids=["relerr", "negpsnr"])
def test_tracker_matches_original_callback_on_random_sequences(keras, negative):
    rng = np.random.default_rng(1234 + 2 * keras + negative)
    n_stops = n_improved = 0
    for trial in range(150):
        patience = int(rng.integers(2, 7))
        errors = random_errors(rng, TWO_PHASE, negative=negative)
        ref, cb = run_reference(TWO_PHASE, errors, patience=patience, keras=keras)
        got, tr = run_tracker(TWO_PHASE, errors, patience=patience, keras=keras)
        assert got == ref, f"trial {trial}, patience {patience}"
        # history: [epoch+1, a, b] per evaluation (stage-start rows checked separately)
        ref_rows = [r for r in cb.err_history]
        assert len(tr.history) == len(ref_rows)
        for row, rrow, t in zip(tr.history, ref_rows, ref):
            if t[0] == "epoch":
                assert row == rrow
            else:
                assert row[1:] == rrow[1:]
        ref_best = cb.best_err_train * (1 - cb.test_weight) + cb.best_err_test * cb.test_weight
        assert tr.best_err == pytest.approx(ref_best, rel=1e-15)
        n_stops += sum(t[6] for t in ref)
        n_improved += sum(t[2] for t in ref)
    assert n_stops > 50 and n_improved > 200          # the sequences exercise both rules


@pytest.mark.parametrize("keras", [True, False], ids=["keras_compat", "default"])
def test_tracker_matches_original_callback_with_reduce_lr(keras):
    rng = np.random.default_rng(99 + keras)
    stages = [(0, 0, 40, 1e-3)]                       # branch B: one fit with reduce-LR
    n_reductions = 0
    for trial in range(150):
        patience = int(rng.integers(3, 12))
        patience_lr = [None, int(rng.integers(1, 6)), patience + 5][trial % 3]
        factor = [0.5, math.sqrt(0.1)][trial % 2]
        min_lr = [1e-4, 2e-4, 1e-5][trial % 3]
        errors = random_errors(rng, stages)
        kw = dict(patience=patience, keras=keras, reduce_lr=True, patience_lr=patience_lr, factor=factor,
                  min_lr=min_lr, test_weights=(1.0, 1.0))
        ref, _ = run_reference(stages, errors, **kw)
        got, _ = run_tracker(stages, errors, **kw)
        assert [t[:5] + (t[6],) for t in got] == [t[:5] + (t[6],) for t in ref], f"trial {trial}"
        for g, r in zip(got, ref):
            assert g[5] == pytest.approx(r[5], rel=1e-12)
        n_reductions += len({t[5] for t in ref})
    assert n_reductions > 300


# ---------------------------------------------------------------------------------- improvement rule
def test_improvement_threshold_positive_errors():
    tr = BestModelTracker(keras_compat=True)              # best = 1
    assert not tr.evaluate(0, 0.9995, 0.9995)            # 0.05 % gain: not an improvement
    assert tr.best_err == 1.0 and tr.best_epoch == 0
    assert tr.evaluate(1, 0.998, 0.998)                  # 0.2 % gain
    assert tr.best_err == pytest.approx(0.998) and tr.best_epoch == tr.best_epoch_update == 2
    assert not tr.evaluate(2, 0.9975, 0.9975)            # 0.05 % of 0.998
    assert not tr.evaluate(3, 1.5, 1.5)                  # worse
    assert tr.best_epoch == 2


def test_improvement_threshold_negative_errors():
    tr = BestModelTracker()                              # default: best = +inf
    assert tr.evaluate(0, -30.0, -30.0)
    assert not tr.evaluate(1, -30.015, -30.015)          # 0.05 % better: no
    assert not tr.evaluate(2, -29.0, -29.0)              # worse (−29 > −30)
    assert tr.evaluate(3, -30.06, -30.06)                # 0.2 % better
    assert tr.best_err == pytest.approx(-30.06) and tr.best_epoch == 4
    assert tr.is_improvement(-31.0) and not tr.is_improvement(-30.07) and not tr.is_improvement(float("nan"))


def test_keras_compat_best_starts_at_one():
    compat = BestModelTracker(keras_compat=True)
    assert compat.best_err == 1.0
    assert not compat.evaluate(0, 1.2, 1.2)
    default = BestModelTracker()
    assert math.isinf(default.best_err)
    assert default.evaluate(0, 1.2, 1.2) and default.best_err == pytest.approx(1.2)


def test_test_weight_combination_and_clipping():
    tr = BestModelTracker(test_weight=0.25)
    assert tr.evaluate(0, 0.4, 0.8)
    assert tr.best_err == pytest.approx(0.75 * 0.4 + 0.25 * 0.8)
    assert tuple(tr.best_parts) == (0.4, 0.8)
    # improvement judged on the combination: a worse 'a' with a much better 'b' still improves
    assert tr.evaluate(1, 0.41, 0.6)                     # 0.4575 < 0.5
    assert tr.best_err == pytest.approx(0.4575)
    assert not tr.evaluate(2, 0.3, 1.0)                  # better 'a', but 0.475 > 0.4575
    assert tr.evaluate(3, 0.3, 0.9)                      # 0.45: 1.6 % better
    assert BestModelTracker(test_weight=2.0).test_weight == 1.0
    assert BestModelTracker(test_weight=-1.0).test_weight == 0.0


def test_set_test_weight_recombines_best_parts():
    """The fine-tuning phase compares against the carried-over parts with its own weighting (w = 1 → b)."""
    tr = BestModelTracker(test_weight=0.0)
    tr.evaluate(0, 0.2, 0.7)                             # pre-training: selection on a only
    tr.set_test_weight(1.0)
    assert tr.best_err == pytest.approx(0.7)
    assert tr.evaluate(5, 0.1, 0.65)                     # 0.65 < 0.7
    tr.set_test_weight(3.0)
    assert tr.test_weight == 1.0


# ----------------------------------------------------------------------------------- patience / stop
def test_patience_stop_epoch_and_stage_reset():
    tr = BestModelTracker(patience=3)
    tr.start_stage(0)
    tr.evaluate(0, 0.5, 0.5, at_stage_start=True)
    stops = []
    for epoch in range(0, 10):
        tr.evaluate(epoch, 0.9, 0.9)                     # never improves
        if tr.after_epoch(epoch, 1e-3).stop:
            stops.append(epoch)
            break
    assert stops == [2]                                  # epoch+1 − 0 ≥ 3
    # a new stage restarts the window at its start
    tr.start_stage(10)
    assert tr.best_epoch_update == 10
    tr.evaluate(10, 0.9, 0.9, at_stage_start=True)
    assert [e for e in range(10, 20) if (tr.evaluate(e, 0.9, 0.9), tr.after_epoch(e, 1e-3).stop)[1]][0] == 12


@pytest.mark.parametrize("keras, expected_stop", [(True, 4), (False, 7)])
def test_stage_start_improvement_quirk(keras, expected_stop):
    """keras_compat: an improvement at a stage start sets best_epoch_update = 0, so the stage stops as soon as
    the epoch index ≥ patience − 1; default: the window starts at the stage start."""
    patience = 5
    tr = BestModelTracker(patience=patience, keras_compat=keras)
    tr.start_stage(3)
    assert tr.evaluate(3, 0.5, 0.5, at_stage_start=True)
    assert tr.best_epoch_update == (0 if keras else 3)
    assert tr.best_epoch == (0 if keras else 3)
    stop = None
    for epoch in range(3, 20):
        tr.evaluate(epoch, 0.6, 0.6)
        if tr.after_epoch(epoch, 1e-3).stop:
            stop = epoch
            break
    assert stop == expected_stop


def test_fan_log_finetune_stops_after_one_epoch_in_keras_compat():
    """'Early stoped at epoch 400': the fine-tuning stage [400, 480) ends after its first epoch."""
    tr = BestModelTracker(patience=10, keras_compat=True, test_weight=0.0)
    tr.evaluate(399, 0.02, 0.05)                         # last pre-training improvement (aux head 0.05)
    tr.set_test_weight(1.0)
    tr.start_stage(400)
    assert tr.evaluate(400, 0.03, 0.03, at_stage_start=True)   # 0.03 < carried-over aux error 0.05
    tr.evaluate(400, 0.031, 0.031)
    assert tr.after_epoch(400, 1e-3).stop
    default = BestModelTracker(patience=10, test_weight=0.0)
    default.evaluate(399, 0.02, 0.05)
    default.set_test_weight(1.0)
    default.start_stage(400)
    default.evaluate(400, 0.03, 0.03, at_stage_start=True)
    default.evaluate(400, 0.031, 0.031)
    assert not default.after_epoch(400, 1e-3).stop


# ------------------------------------------------------------------------------------------ reduce-LR
def test_patience_lr_default_and_clipping():
    assert BestModelTracker(patience=10).patience_lr == 5
    assert BestModelTracker(patience=11).patience_lr == 5
    assert BestModelTracker(patience=10, patience_lr=20).patience_lr == 10
    assert BestModelTracker(patience=40, patience_lr=20).patience_lr == 20


def test_reduce_lr_factor_floor_guard_and_restart():
    tr = BestModelTracker(patience=100, reduce_lr=True, patience_lr=3, factor=0.5, min_lr=3e-4)
    tr.start_stage(0)
    tr.evaluate(0, 0.5, 0.5, at_stage_start=True)
    lr, events = 1e-3, []
    for epoch in range(20):
        tr.evaluate(epoch, 0.9, 0.9)
        d = tr.after_epoch(epoch, lr)
        if d.reduce_lr:
            events.append((epoch, d.new_lr))
            assert tr.best_epoch == tr.best_epoch_update == epoch + 1
            lr = d.new_lr
        assert not d.stop
    # epochs 2 (0+3), 5 (counter restarted at 3), then the floor: 1e-3 → 5e-4 → 3e-4, none after
    assert [e for e, _ in events] == [2, 5]
    assert [v for _, v in events] == pytest.approx([5e-4, 3e-4])


def test_reduce_lr_guard_lr_within_1e7_of_min_lr():
    tr = BestModelTracker(patience=100, reduce_lr=True, patience_lr=1, factor=0.5, min_lr=1e-5)
    tr.start_stage(0)
    assert not tr.after_epoch(0, 1e-5 + 5e-8).reduce_lr          # lr ≤ min_lr + 1e-7
    d = tr.after_epoch(1, 1e-5 + 2e-7)
    assert d.reduce_lr and d.new_lr == pytest.approx(1e-5)       # max(lr·factor, min_lr)


def test_reduce_lr_prevents_stop_in_same_epoch():
    """Reduce-LR comes first and restarts the count, so patience cannot fire in the same epoch."""
    tr = BestModelTracker(patience=4, reduce_lr=True, patience_lr=4, min_lr=1e-6)
    tr.start_stage(0)
    tr.evaluate(0, 0.5, 0.5, at_stage_start=True)
    d = None
    for epoch in range(4):
        tr.evaluate(epoch, 1.0, 1.0)
        d = tr.after_epoch(epoch, 1e-3)
    assert d.reduce_lr and not d.stop


# -------------------------------------------------------------------------------------------- history
def test_history_rows():
    tr = BestModelTracker(test_weight=0.5)
    tr.start_stage(0)
    tr.evaluate(0, 0.9, 0.8, at_stage_start=True)
    tr.evaluate(0, 0.7, 0.6)
    tr.evaluate(1, 0.75, 0.65)
    tr.start_stage(2)
    tr.evaluate(2, 0.5, 0.4, at_stage_start=True)
    assert tr.history == [[0, 0.9, 0.8], [1, 0.7, 0.6], [2, 0.75, 0.65], [2, 0.5, 0.4]]


# ----------------------------------------------------------------------------------------- state dict
@pytest.mark.parametrize("keras", [True, False])
def test_tracker_state_dict_round_trip_through_checkpoint(tmp_path, keras):
    rng = np.random.default_rng(7)
    errors = random_errors(rng, TWO_PHASE)
    kw = dict(patience=4, test_weight=0.0, reduce_lr=True, patience_lr=2, factor=0.5, min_lr=1e-4,
              keras_compat=keras)
    full = BestModelTracker(**kw)
    half = BestModelTracker(**kw)
    seq = [(e, errors[e]) for e in range(0, 12)]
    lr_full = lr_half = 1e-3
    for e, (a, b) in seq[:6]:
        for tr in (full, half):
            tr.evaluate(e, a, b)
        lr_full = full.after_epoch(e, lr_full).new_lr or lr_full
        lr_half = half.after_epoch(e, lr_half).new_lr or lr_half
    path = atomic_save({"tracker": half.state_dict()}, tmp_path / "t.pt")
    state = load_checkpoint(path)["tracker"]                     # weights_only=True must accept it
    resumed = BestModelTracker()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == half.state_dict()
    assert isinstance(resumed.best_parts, tuple)
    for e, (a, b) in seq[6:]:
        assert full.evaluate(e, a, b) == resumed.evaluate(e, a, b)
        d1, d2 = full.after_epoch(e, lr_full), resumed.after_epoch(e, lr_half)
        assert d1 == d2
        lr_full = d1.new_lr or lr_full
        lr_half = d2.new_lr or lr_half
    assert full.state_dict() == resumed.state_dict()


def test_state_dict_is_a_snapshot():
    tr = BestModelTracker()
    tr.evaluate(0, 0.5, 0.5)
    state = tr.state_dict()
    tr.evaluate(1, 0.1, 0.1)
    assert len(state["history"]) == 1 and state["best_err"] == 0.5


# =====================================================================================================
# Schedule
# =====================================================================================================
def test_build_stages_default_lists():
    B, lr = 32, 1e-3
    stages = build_stages(B, lr, 40)
    assert [s.phase for s in stages] == ["pretrain"] * 9 + ["finetune"] * 4
    assert [s.index for s in stages] == list(range(9)) + list(range(4))
    assert [s.name for s in stages][:2] == ["pretrain-0", "pretrain-1"]
    assert [s.global_batch for s in stages] == [B, 2 * B, 4 * B, 8 * B] + [16 * B] * 5 + [8 * B] + [16 * B] * 3
    expected_lr = [lr] * 5 + [lr * math.sqrt(0.1), lr * 0.1, lr * 0.1 ** 1.5, lr * 0.01] + [lr, lr, lr * 0.1,
                                                                                          lr * 0.01]
    assert [s.lr for s in stages] == pytest.approx(expected_lr, rel=1e-12)
    ranges = [(s.start_epoch, s.end_epoch) for s in stages]
    assert ranges == ([(0, 80)] + [(80 + 40 * i, 120 + 40 * i) for i in range(8)]
                      + [(400, 480), (480, 520), (520, 560), (560, 600)])


@pytest.mark.parametrize("epochs", [1, 3, 7])
def test_build_stages_contiguous_and_deterministic(epochs):
    a = build_stages(16, 2e-3, epochs)
    assert a == build_stages(16, 2e-3, epochs)
    assert a[0].start_epoch == 0
    for prev, cur in zip(a, a[1:]):
        assert cur.start_epoch == prev.end_epoch
    first = {s.phase: s for s in reversed(a) if s.index == 0}
    for s in a:
        length = s.end_epoch - s.start_epoch
        assert length == (2 * epochs if s is first[s.phase] else epochs)
    assert a[-1].end_epoch == 15 * epochs                  # (2 + 8) + (2 + 3)


def test_build_stages_keras_compat_keeps_first_lr_per_phase():
    stages = build_stages(8, 1e-3, 5, keras_compat=True)
    assert all(s.lr == pytest.approx(1e-3) for s in stages)
    assert [s.global_batch for s in stages] == [s.global_batch for s in build_stages(8, 1e-3, 5)]
    custom = build_stages(4, 1.0, 2, keras_compat=True, pretrain_stages=((1, 0.5), (2, 0.1)),
                          finetune_stages=((1, 0.3), (2, 0.01)))
    assert [s.lr for s in custom] == pytest.approx([0.5, 0.5, 0.3, 0.3])
    intended = build_stages(4, 1.0, 2, pretrain_stages=((1, 0.5), (2, 0.1)), finetune_stages=((1, 0.3), (2, 0.01)))
    assert [s.lr for s in intended] == pytest.approx([0.5, 0.1, 0.3, 0.01])
    assert [(s.start_epoch, s.end_epoch) for s in intended] == [(0, 4), (4, 6), (6, 10), (10, 12)]


def test_build_stages_single_phase():
    ft = build_stages(32, 1e-3, 10, pretrain=False)
    assert [s.phase for s in ft] == ["finetune"] * 4
    assert [(s.start_epoch, s.end_epoch) for s in ft] == [(0, 20), (20, 30), (30, 40), (40, 50)]
    pt = build_stages(32, 1e-3, 10, finetune=False)
    assert len(pt) == 9 and pt[-1].end_epoch == 100


def test_initial_value_stage():
    (s,) = initial_value_stage(1e-3, 40)
    assert s.lr == pytest.approx(1e-4) and s.global_batch == 256
    assert (s.start_epoch, s.end_epoch) == (0, 40) and s.phase == "finetune"


# =====================================================================================================
# Checkpoints
# =====================================================================================================
class NotAllowed:
    """An arbitrary object: weights_only loading must refuse it."""

    def __init__(self):
        self.x = 1


class Boom:
    """Raises while being pickled (a save that fails half way)."""

    def __init__(self, exc=RuntimeError):
        self.exc = exc

    def __reduce_ex__(self, protocol):
        raise self.exc("serialization failed")


def _layout():
    return {"model": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.float64)},
            "step": 17, "lr": 3.5e-4, "name": "pretrain-2", "flag": True, "none": None,
            "list": [1, 2.5, "x", [3, 4]], "tuple": (1, 2),
            "nested": {"a": {"b": [torch.ones(2), {"c": float("inf")}]}}}


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


def test_atomic_save_and_weights_only_load(tmp_path):
    path = atomic_save(_layout(), tmp_path / "sub" / "best.pt")
    assert path == tmp_path / "sub" / "best.pt"
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]
    _assert_same(_layout(), load_checkpoint(path))


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_save_failure_keeps_old_file(tmp_path, exc):
    path = atomic_save({"v": 1, "t": torch.ones(3)}, tmp_path / "last.pt")
    with pytest.raises(exc):
        atomic_save({"v": 2, "big": torch.zeros(10_000), "bad": Boom(exc)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    _assert_same({"v": 1, "t": torch.ones(3)}, load_checkpoint(path))


def test_atomic_save_never_writes_target_directly(tmp_path, monkeypatch):
    """A save killed after writing part of the data (here: torch.save writes then raises) leaves the old file."""
    path = atomic_save({"v": 1}, tmp_path / "best.pt")
    before = path.read_bytes()
    real_save = torch.save

    def partial_save(obj, f, *a, **k):
        f.write(b"PARTIAL")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", partial_save)
    with pytest.raises(OSError):
        atomic_save({"v": 2}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
    monkeypatch.setattr(ckpt.torch, "save", real_save)

    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_save({"v": 3}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_atomic_save_respects_umask(tmp_path):
    """A checkpoint gets the permissions of a normally created file (0666 & ~umask), like torch.save(path)
    would give it: mkstemp's private 0600 must not leak into the result (shared run directories)."""
    umask = os.umask(0o022)
    try:
        path = atomic_save({"v": 1}, tmp_path / "best.pt")
        reference = tmp_path / "plain.pt"
        torch.save({"v": 1}, reference)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode) == 0o644


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "obj": NotAllowed()}, path)
    with pytest.raises(DataError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataError):
        load_checkpoint(garbage)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_strip_prefixes():
    t = torch.zeros(1)
    state = {"module.a.weight": t, "_orig_mod.b": 1, "module._orig_mod.c": 2, "_orig_mod.module.d": 3,
             "module.module.e": 4, "f.module.g": 5, "h": 6}
    out = strip_prefixes(state)
    assert list(out) == ["a.weight", "b", "c", "d", "e", "f.module.g", "h"]
    assert out["a.weight"] is t


class FakeDDP(nn.Module):
    """Wraps like DistributedDataParallel: the model is `.module`, state keys get 'module.'."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


class FakeCompiled(nn.Module):
    """Wraps like torch.compile's OptimizedModule: the model is `._orig_mod`, keys get '_orig_mod.'."""

    def __init__(self, module):
        super().__init__()
        self._orig_mod = module

    def forward(self, x):
        return self._orig_mod(x)


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_unwrap_and_model_state_with_fake_wrappers():
    m = _tiny()
    for wrapped in (m, FakeDDP(m), FakeCompiled(m), FakeDDP(FakeCompiled(m)), FakeCompiled(FakeDDP(m))):
        assert unwrap(wrapped) is m
        state = model_state(wrapped)
        assert list(state) == list(m.state_dict())
        for k, v in m.state_dict().items():
            assert torch.equal(state[k], v) and state[k].device.type == "cpu"
    state = model_state(FakeDDP(m))
    state["0.weight"].add_(1.0)                           # a copy, not the live parameter
    assert not torch.equal(state["0.weight"], m[0].weight)


def test_unwrap_real_torch_compile():
    m = _tiny()
    compiled = torch.compile(m, backend="eager")           # wrapping only: never called
    assert list(compiled.state_dict())[0].startswith("_orig_mod.")
    assert unwrap(compiled) is m
    assert unwrap(FakeDDP(compiled)) is m
    assert unwrap(torch.compile(FakeDDP(m), backend="eager")) is m
    assert list(model_state(torch.compile(FakeDDP(m), backend="eager"))) == list(m.state_dict())


def test_load_model_state_prefixed_into_wrapped():
    src, dst = _tiny(), nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    prefixed = FakeCompiled(FakeDDP(src)).state_dict()
    assert all(k.startswith("_orig_mod.module.") for k in prefixed)
    load_model_state(FakeDDP(dst), prefixed)
    for (k, v), (_, w) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(v, w), k
    with pytest.raises(RuntimeError):                     # strict
        load_model_state(dst, {k: v for k, v in list(src.state_dict().items())[:-1]})


def test_remove_stale_temporaries(tmp_path):
    keep = ["best.pt", "last.pt", "notes.tmp", "visible.pt.tmp"]
    stale = [".best.pt.abc123.tmp", ".last.pt.x.tmp"]
    for name in keep + stale:
        (tmp_path / name).write_bytes(b"x")
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    remove_stale_temporaries(tmp_path / "does-not-exist")            # no error


def test_remove_stale_temporaries_catches_real_leftover(tmp_path, monkeypatch):
    """The leftover of a save killed by SIGKILL (no cleanup) is recognised by remove_stale_temporaries."""
    monkeypatch.setattr(pathlib.Path, "unlink", lambda self, missing_ok=False: None)  # the except-clause never ran
    with pytest.raises(RuntimeError):
        atomic_save({"bad": Boom()}, tmp_path / "best.pt")
    monkeypatch.undo()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name != "best.pt"
    remove_stale_temporaries(tmp_path)
    assert list(tmp_path.iterdir()) == []


# =====================================================================================================
# Metrics
# =====================================================================================================
def np_weighted(p, y):
    nr = y.shape[-1]
    w = np.arange(nr) * 2 + 1.0
    num = np.sqrt(np.sum(((p - y) * w) ** 2, axis=(1, 2)))
    den = np.sqrt(np.sum((y * w) ** 2, axis=(1, 2)))
    return num / den


def np_psnr(p, y, pixel_max=2.0):
    mse = np.mean((p - y) ** 2, axis=tuple(range(1, y.ndim)))
    return -10 * np.log10(np.maximum(mse / pixel_max ** 2, 1e-10))


def _pair(seed, shape=(5, 8, 6)):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=shape)
    p = y + rng.normal(scale=0.1, size=shape) * rng.uniform(0.1, 2, size=(shape[0], 1, 1))
    return p, y


def test_weighted_relative_error_matches_numpy():
    p, y = _pair(0)
    got = weighted_relative_error(torch.from_numpy(p), torch.from_numpy(y))
    np.testing.assert_allclose(got.numpy(), np_weighted(p, y), rtol=1e-12)
    # the weight runs along the last (radial) axis: an error at a large radius counts more
    y1 = np.ones((1, 4, 5))
    p_inner, p_outer = y1.copy(), y1.copy()
    p_inner[0, 0, 0] += 1
    p_outer[0, 0, 4] += 1
    e_in = weighted_relative_error(torch.from_numpy(p_inner), torch.from_numpy(y1)).item()
    e_out = weighted_relative_error(torch.from_numpy(p_outer), torch.from_numpy(y1)).item()
    assert e_out / e_in == pytest.approx(9.0)              # w_4 / w_0 = 9 / 1
    f32 = weighted_relative_error(torch.from_numpy(p).float(), torch.from_numpy(y).float())
    np.testing.assert_allclose(f32.numpy(), np_weighted(p, y), rtol=1e-5)


def test_relative_l2_matches_numpy():
    p, y = _pair(1)
    want = np.linalg.norm((p - y).reshape(5, -1), axis=1) / np.linalg.norm(y.reshape(5, -1), axis=1)
    np.testing.assert_allclose(relative_l2(torch.from_numpy(p), torch.from_numpy(y)).numpy(), want, rtol=1e-12)


def test_psnr_matches_numpy_with_floor():
    p, y = _pair(2)
    p[0] = y[0]                                            # exact prediction: floor 1e-10 → 100 dB
    p[1] = y[1] + 1e-7                                     # MSE/4 = 2.5e-15 < 1e-10: also 100 dB
    got = psnr(torch.from_numpy(p), torch.from_numpy(y))
    np.testing.assert_allclose(got.numpy(), np_psnr(p, y), rtol=1e-12)
    assert got[0].item() == pytest.approx(100.0) and got[1].item() == pytest.approx(100.0)
    np.testing.assert_allclose(psnr(torch.from_numpy(p), torch.from_numpy(y), pixel_max=1.0).numpy(),
                               np_psnr(p, y, 1.0), rtol=1e-12)
    # pixel_max 2: a constant error of 0.2 → MSE 0.04 → 10·log10(4/0.04) = 20 dB
    assert psnr(torch.full((1, 3, 3), 0.2), torch.zeros(1, 3, 3)).item() == pytest.approx(20.0, rel=1e-6)


def test_per_sample_error_dispatch():
    p, y = (torch.from_numpy(a) for a in _pair(3))
    assert torch.equal(per_sample_error("weighted", p, y), weighted_relative_error(p, y))
    assert torch.equal(per_sample_error("rel_l2", p, y), relative_l2(p, y))
    np.testing.assert_allclose(per_sample_error("psnr", p, y).numpy(), -np_psnr(p.numpy(), y.numpy()), rtol=1e-12)
    with pytest.raises(ValueError, match="mse"):
        per_sample_error("mse", p, y)


class FakeCtx:
    device = "cpu"

    def all_reduce_sum(self, t):
        return t.clone()

    def all_reduce_max(self, v):
        return float(v)


def test_error_accumulator_matches_numpy():
    rng = np.random.default_rng(5)
    chunks = [rng.normal(3.0, 1.5, size=n) for n in (7, 1, 0, 13, 4)]
    acc = ErrorAccumulator()
    for c in chunks:
        acc.add(torch.from_numpy(c).float())
    acc.add(torch.tensor([]))
    allv = np.concatenate([c.astype(np.float32).astype(np.float64) for c in chunks])
    r = acc.reduce(FakeCtx())
    assert r["count"] == allv.size == 25
    assert r["mean"] == pytest.approx(allv.mean(), rel=1e-12)
    assert r["std"] == pytest.approx(allv.std(), rel=1e-9)
    assert r["max"] == allv.max()
    empty = ErrorAccumulator().reduce(FakeCtx())
    assert empty["count"] == 0 and math.isnan(empty["mean"])


# ---------------------------------------------------------------------- 2-process gloo reduction
RANK_DATA = {0: [[0.5, 1.25, 3.0], [2.0]], 1: [[0.1, 7.5], [0.2, 0.3, 0.4, 0.6, 0.7]]}   # 4 vs 7 samples
RANK_DATA_B = {0: [], 1: [[-3.0, -1.0, -2.0]]}                                          # rank 0 has none


def _gloo_worker(rank, world, port, outdir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    try:
        ctx = DistContext(LaunchEnv("torchrun", rank, world, rank, "127.0.0.1", port), torch.device("cpu"),
                          "gloo")
        out = {}
        for name, data in (("a", RANK_DATA), ("b", RANK_DATA_B)):
            acc = ErrorAccumulator()
            for chunk in data[rank]:
                acc.add(torch.tensor(chunk, dtype=torch.float64))
            out[name] = acc.reduce(ctx)
        with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_error_accumulator_gloo_two_processes(tmp_path):
    # fork: the children inherit the imported modules (spawn would re-import torch: ~15 s on 2 cores)
    pc = mp.start_processes(_gloo_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False,
                            start_method="fork")
    deadline = time.time() + 60
    while not pc.join(timeout=1):
        if time.time() > deadline:
            for p in pc.processes:
                p.kill()
            pytest.fail("gloo workers did not finish in 60 s")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]
    for name, data in (("a", RANK_DATA), ("b", RANK_DATA_B)):
        allv = np.array([v for r in range(2) for chunk in data[r] for v in chunk])
        got = results[0][name]
        assert got["count"] == allv.size
        assert got["mean"] == pytest.approx(allv.mean(), rel=1e-14)   # not the mean of rank means
        assert got["std"] == pytest.approx(allv.std(), rel=1e-12)
        assert got["max"] == allv.max()
    assert results[0]["a"]["mean"] != pytest.approx(np.mean([np.mean(sum(RANK_DATA[r], [])) for r in range(2)]))
