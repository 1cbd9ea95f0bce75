"""Warmup + cosine learning-rate schedule and the trainer's config checks."""

from __future__ import annotations

import math

import pytest

from emaprobe.train import OptimConfig, TrainConfig, lr_at


def test_lr_warmup_is_linear_then_cosine_reaches_floor():
    o = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert [lr_at(s, 100, o) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr_at(9, 100, o) == pytest.approx(1.0)
    assert lr_at(10, 100, o) == pytest.approx(1.0)
    mid = 10 + 45
    assert lr_at(mid, 100, o) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(100, 100, o) == pytest.approx(0.1)
    lrs = [lr_at(s, 100, o) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])), "cosine decay must not increase"


def test_lr_without_warmup_starts_at_peak():
    o = OptimConfig(lr=3e-3, warmup_steps=0, min_lr_ratio=0.0)
    assert lr_at(0, 50, o) == pytest.approx(3e-3)
    assert lr_at(50, 50, o) == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(lr_at(0, 1, o))


@pytest.mark.parametrize(
    "kwargs, field",
    [({"steps": 0}, "train.steps"), ({"device": "tpu"}, "train.device"), ({"dtype": "fp16"}, "train.dtype")],
)
def test_train_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


def test_optim_config_rejects_bad_lr():
    with pytest.raises(ValueError, match="optim.lr"):
        OptimConfig(lr=0.0)
