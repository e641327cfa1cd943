"""The SaveBestModel state machine (`bcrdist.train.best_model.BestModelTracker`).

BestModelTracker is compared with `KerasSaveBestModel` below, an independent transcription of the original
`mnn/callback.py` arithmetic (reference original-code.md §4) driven the way the original script drove it
(§5.7: one `fit` per stage, `best_epoch_update ← n_pre` between stages, the same callback object for both
phases, the fine-tuning phase switching to test_weight 1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bcrdist.errors import DataError
from bcrdist.models.checkpoint import atomic_save, load_checkpoint
from bcrdist.train.best_model import STATE_FIELDS, BestModelTracker


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
        improved = tr.compare_with_best(start, *errors[("start", si)], at_stage_start=True)
        trace.append(("start", start, improved, tr.best_epoch, tr.best_epoch_update, lr, False))
        for epoch in range(start, end):
            improved = tr.compare_with_best(epoch, *errors[epoch])
            d = tr.decide(epoch, lr)
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
    assert not tr.compare_with_best(0, 0.9995, 0.9995)            # 0.05 % gain: not an improvement
    assert tr.best_err == 1.0 and tr.best_epoch == 0
    assert tr.compare_with_best(1, 0.998, 0.998)                  # 0.2 % gain
    assert tr.best_err == pytest.approx(0.998) and tr.best_epoch == tr.best_epoch_update == 2
    assert not tr.compare_with_best(2, 0.9975, 0.9975)            # 0.05 % of 0.998
    assert not tr.compare_with_best(3, 1.5, 1.5)                  # worse
    assert tr.best_epoch == 2


def test_improvement_threshold_negative_errors():
    tr = BestModelTracker()                              # default: best = +inf
    assert tr.compare_with_best(0, -30.0, -30.0)
    assert not tr.compare_with_best(1, -30.015, -30.015)          # 0.05 % better: no
    assert not tr.compare_with_best(2, -29.0, -29.0)              # worse (−29 > −30)
    assert tr.compare_with_best(3, -30.06, -30.06)                # 0.2 % better
    assert tr.best_err == pytest.approx(-30.06) and tr.best_epoch == 4
    assert tr.is_improvement(-31.0) and not tr.is_improvement(-30.07) and not tr.is_improvement(float("nan"))


def test_keras_compat_best_starts_at_one():
    compat = BestModelTracker(keras_compat=True)
    assert compat.best_err == 1.0
    assert not compat.compare_with_best(0, 1.2, 1.2)
    default = BestModelTracker()
    assert math.isinf(default.best_err)
    assert default.compare_with_best(0, 1.2, 1.2) and default.best_err == pytest.approx(1.2)


def test_test_weight_combination_and_clipping():
    tr = BestModelTracker(test_weight=0.25)
    assert tr.compare_with_best(0, 0.4, 0.8)
    assert tr.best_err == pytest.approx(0.75 * 0.4 + 0.25 * 0.8)
    assert tuple(tr.best_parts) == (0.4, 0.8)
    # improvement judged on the combination: a worse 'a' with a much better 'b' still improves
    assert tr.compare_with_best(1, 0.41, 0.6)                     # 0.4575 < 0.5
    assert tr.best_err == pytest.approx(0.4575)
    assert not tr.compare_with_best(2, 0.3, 1.0)                  # better 'a', but 0.475 > 0.4575
    assert tr.compare_with_best(3, 0.3, 0.9)                      # 0.45: 1.6 % better
    assert BestModelTracker(test_weight=2.0).test_weight == 1.0
    assert BestModelTracker(test_weight=-1.0).test_weight == 0.0


def test_set_test_weight_recombines_best_parts():
    """The fine-tuning phase compares against the carried-over parts with its own weighting (w = 1 → b)."""
    tr = BestModelTracker(test_weight=0.0)
    tr.compare_with_best(0, 0.2, 0.7)                             # pre-training: selection on a only
    tr.set_test_weight(1.0)
    assert tr.best_err == pytest.approx(0.7)
    assert tr.compare_with_best(5, 0.1, 0.65)                     # 0.65 < 0.7
    tr.set_test_weight(3.0)
    assert tr.test_weight == 1.0


# ----------------------------------------------------------------------------------- patience / stop
def test_patience_stop_epoch_and_stage_reset():
    tr = BestModelTracker(patience=3)
    tr.start_stage(0)
    tr.compare_with_best(0, 0.5, 0.5, at_stage_start=True)
    stops = []
    for epoch in range(0, 10):
        tr.compare_with_best(epoch, 0.9, 0.9)                     # never improves
        if tr.decide(epoch, 1e-3).stop:
            stops.append(epoch)
            break
    assert stops == [2]                                  # epoch+1 − 0 ≥ 3
    # a new stage restarts the window at its start
    tr.start_stage(10)
    assert tr.best_epoch_update == 10
    tr.compare_with_best(10, 0.9, 0.9, at_stage_start=True)
    assert [e for e in range(10, 20) if (tr.compare_with_best(e, 0.9, 0.9), tr.decide(e, 1e-3).stop)[1]][0] == 12


@pytest.mark.parametrize("keras, expected_stop", [(True, 4), (False, 7)])
def test_stage_start_improvement_quirk(keras, expected_stop):
    """keras_compat: an improvement at a stage start sets best_epoch_update = 0, so the stage stops as soon as
    the epoch index ≥ patience − 1; default: the window starts at the stage start."""
    patience = 5
    tr = BestModelTracker(patience=patience, keras_compat=keras)
    tr.start_stage(3)
    assert tr.compare_with_best(3, 0.5, 0.5, at_stage_start=True)
    assert tr.best_epoch_update == (0 if keras else 3)
    assert tr.best_epoch == (0 if keras else 3)
    stop = None
    for epoch in range(3, 20):
        tr.compare_with_best(epoch, 0.6, 0.6)
        if tr.decide(epoch, 1e-3).stop:
            stop = epoch
            break
    assert stop == expected_stop


def test_fan_log_finetune_stops_after_one_epoch_in_keras_compat():
    """'Early stoped at epoch 400': the fine-tuning stage [400, 480) ends after its first epoch."""
    tr = BestModelTracker(patience=10, keras_compat=True, test_weight=0.0)
    tr.compare_with_best(399, 0.02, 0.05)                         # last pre-training improvement (aux head 0.05)
    tr.set_test_weight(1.0)
    tr.start_stage(400)
    assert tr.compare_with_best(400, 0.03, 0.03, at_stage_start=True)   # 0.03 < carried-over aux error 0.05
    tr.compare_with_best(400, 0.031, 0.031)
    assert tr.decide(400, 1e-3).stop
    default = BestModelTracker(patience=10, test_weight=0.0)
    default.compare_with_best(399, 0.02, 0.05)
    default.set_test_weight(1.0)
    default.start_stage(400)
    default.compare_with_best(400, 0.03, 0.03, at_stage_start=True)
    default.compare_with_best(400, 0.031, 0.031)
    assert not default.decide(400, 1e-3).stop


# ------------------------------------------------------------------------------------------ reduce-LR
def test_patience_lr_default_and_clipping():
    assert BestModelTracker(patience=10).patience_lr == 5
    assert BestModelTracker(patience=11).patience_lr == 5
    assert BestModelTracker(patience=10, patience_lr=20).patience_lr == 10
    assert BestModelTracker(patience=40, patience_lr=20).patience_lr == 20


def test_reduce_lr_factor_floor_guard_and_restart():
    tr = BestModelTracker(patience=100, reduce_lr=True, patience_lr=3, factor=0.5, min_lr=3e-4)
    tr.start_stage(0)
    tr.compare_with_best(0, 0.5, 0.5, at_stage_start=True)
    lr, events = 1e-3, []
    for epoch in range(20):
        tr.compare_with_best(epoch, 0.9, 0.9)
        d = tr.decide(epoch, lr)
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
    assert not tr.decide(0, 1e-5 + 5e-8).reduce_lr          # lr ≤ min_lr + 1e-7
    d = tr.decide(1, 1e-5 + 2e-7)
    assert d.reduce_lr and d.new_lr == pytest.approx(1e-5)       # max(lr·factor, min_lr)


def test_reduce_lr_prevents_stop_in_same_epoch():
    """Reduce-LR comes first and restarts the count, so patience cannot fire in the same epoch."""
    tr = BestModelTracker(patience=4, reduce_lr=True, patience_lr=4, min_lr=1e-6)
    tr.start_stage(0)
    tr.compare_with_best(0, 0.5, 0.5, at_stage_start=True)
    d = None
    for epoch in range(4):
        tr.compare_with_best(epoch, 1.0, 1.0)
        d = tr.decide(epoch, 1e-3)
    assert d.reduce_lr and not d.stop


# -------------------------------------------------------------------------------------------- history
def test_history_rows():
    tr = BestModelTracker(test_weight=0.5)
    tr.start_stage(0)
    tr.compare_with_best(0, 0.9, 0.8, at_stage_start=True)
    tr.compare_with_best(0, 0.7, 0.6)
    tr.compare_with_best(1, 0.75, 0.65)
    tr.start_stage(2)
    tr.compare_with_best(2, 0.5, 0.4, at_stage_start=True)
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
            tr.compare_with_best(e, a, b)
        lr_full = full.decide(e, lr_full).new_lr or lr_full
        lr_half = half.decide(e, lr_half).new_lr or lr_half
    path = atomic_save({"tracker": half.state_dict()}, tmp_path / "t.pt")
    state = load_checkpoint(path)["tracker"]                     # weights_only=True must accept it
    resumed = BestModelTracker(**kw)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == half.state_dict()
    assert isinstance(resumed.best_parts, tuple)
    for e, (a, b) in seq[6:]:
        assert full.compare_with_best(e, a, b) == resumed.compare_with_best(e, a, b)
        d1, d2 = full.decide(e, lr_full), resumed.decide(e, lr_half)
        assert d1 == d2
        lr_full = d1.new_lr or lr_full
        lr_half = d2.new_lr or lr_half
    assert full.state_dict() == resumed.state_dict()


def test_state_dict_is_a_snapshot():
    tr = BestModelTracker()
    tr.compare_with_best(0, 0.5, 0.5)
    state = tr.state_dict()
    tr.compare_with_best(1, 0.1, 0.1)
    assert len(state["history"]) == 1 and state["best_err"] == 0.5


def test_state_dict_holds_the_state_not_the_configuration():
    tr = BestModelTracker(patience=4, rel_threshold=0.01, test_weight=0.3, reduce_lr=True, patience_lr=2,
                          factor=0.1, min_lr=1e-4, keras_compat=True)
    tr.compare_with_best(0, 0.5, 0.6)
    state = tr.state_dict()
    assert tuple(state) == STATE_FIELDS
    assert state == {"best_err": pytest.approx(0.7 * 0.5 + 0.3 * 0.6), "best_parts": [0.5, 0.6], "best_epoch": 1,
                     "best_epoch_update": 1, "history": [[1, 0.5, 0.6]]}


def test_resume_with_a_new_config_keeps_the_new_rules(tmp_path):
    """A resumed run applies its own config's patience, thresholds and reduce-LR rules to the saved state."""
    old_rules = dict(patience=4, rel_threshold=1e-3, reduce_lr=True, patience_lr=2, factor=0.5, min_lr=1e-4)
    new_rules = dict(patience=7, rel_threshold=0.2, reduce_lr=True, patience_lr=3, factor=0.1, min_lr=1e-6)
    old = BestModelTracker(**old_rules)
    old.start_stage(0)
    old.compare_with_best(0, 0.5, 0.5, at_stage_start=True)
    old.compare_with_best(0, 0.45, 0.45)                  # improves (10 %), epoch 1
    old.decide(0, 1e-3)
    path = atomic_save({"tracker": old.state_dict()}, tmp_path / "t.pt")
    resumed = BestModelTracker(**new_rules)
    resumed.load_state_dict(load_checkpoint(path)["tracker"])
    for key, value in new_rules.items():
        assert getattr(resumed, key) == value, key
    assert resumed.state_dict() == old.state_dict()
    # the new threshold: a 10 % gain no longer counts (the old one would have taken it)
    assert old.is_improvement(0.405) and not resumed.is_improvement(0.405)
    # the new reduce-LR patience (3 epochs after the improvement at epoch 1) and factor
    assert not resumed.decide(2, 1e-3).reduce_lr
    d = resumed.decide(3, 1e-3)
    assert d.reduce_lr and d.new_lr == pytest.approx(1e-4) and not d.stop
    # the new patience: 7 epochs after the restart at epoch 4 (the old rules stop 4 after their last restart)
    stops = [e for e in range(4, 20) if (resumed.compare_with_best(e, 0.9, 0.9), resumed.decide(e, 1e-6).stop)[1]]
    assert stops[0] == 10


def test_load_state_dict_refuses_a_configuration_in_the_state():
    """The 0.1 format stored the configuration with the state; only `bcrdist.train.state` converts it."""
    tr = BestModelTracker()
    old_layout = {**tr.state_dict(), "patience": 3, "min_lr": 1e-3}
    with pytest.raises(DataError, match="best-model tracker state"):
        BestModelTracker().load_state_dict(old_layout)
