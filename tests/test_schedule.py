"""The stage schedule of the original recipe (`bcrdist.train.schedule`)."""

from __future__ import annotations

import math

import pytest

from bcrdist.train.schedule import build_stages, initial_value_stage


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
