"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

    lr(s) = lr * (s + 1) / warmup                               for s < warmup
    lr(s) = lr * (r + (1 - r) * (1 + cos(pi * p)) / 2),  p = (s - warmup) / (steps - warmup)

with r = ``min_lr_ratio`` and s the 0-based optimizer step. A pure function of the
step, so a resumed run needs nothing but the step counter to continue it exactly.
"""

from __future__ import annotations

import math

from emaprobe.train.config import OptimConfig


def lr_at(step: int, steps: int, optim: OptimConfig) -> float:
    """Learning rate of 0-based optimizer step ``step`` out of ``steps``."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    span = max(1, steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    ratio = optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return optim.lr * ratio
