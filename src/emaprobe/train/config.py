"""Typed, frozen configs of the LM trainer.

``TrainConfig`` holds everything about a run except the model and the data: steps,
batch shape, evaluation and checkpoint cadence, precision, and an ``OptimConfig``.
The CLI sets any field with a dotted override, ``--set train.optim.lr=3e-3``, through
``emaprobe.utils.apply_overrides`` (an unknown field lists the valid ones).

Tokens per optimizer step = batch_size * seq_len * grad_accum * world_size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "fp32", "bf16")
# torch.compile modes of the training step: "reduce-overhead" also replays the compiled forward and
# backward as CUDA graphs (on CUDA; elsewhere it compiles as "default"), which takes the gaps between
# kernels out of a step. A replay reuses its outputs' memory, the gradients included, so it needs one
# micro-step a step (a second would overwrite the first's gradients) and no DDP (its hooks run outside
# the graphs).
COMPILE_MODES = ("default", "reduce-overhead")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup and cosine decay toward ``min_lr_ratio * lr``.

    The cosine reaches the floor one step after the last (at 0-based step ``steps``), so the
    last step runs just above it (``schedule.lr_at``; committed results use this schedule).

    Weight decay applies to matrices only (dim >= 2; the nanoGPT convention), and not
    to the decay logits and gate biases of the context mixers, which are marked
    ``_no_weight_decay`` as Mamba marks ``A_log``.
    """

    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off

    def __post_init__(self) -> None:
        # inf and NaN pass a plain comparison (NaN fails every one, so `x < 0` lets it through), and
        # torch would then train on them silently (grad_clip=nan turned clipping off) or fail late
        for name in ("lr", "weight_decay", "eps", "grad_clip"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"optim.{name} must be a finite number, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if not self.eps > 0:
            # eps=0 divides by a zero second moment (NaN weights after a step with a finite loss)
            raise ValueError(f"optim.eps must be > 0 (AdamW divides by sqrt(v) + eps), got {self.eps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"optim.beta1 and optim.beta2 must lie in [0, 1), got {self.beta1}, {self.beta2}")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip must be >= 0, got {self.grad_clip}")


@dataclass(frozen=True)
class TrainConfig:
    """One LM training run. ``batch_size`` is per process and per micro-step."""

    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 128
    grad_accum: int = 1
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200  # 0: only at the end
    eval_steps: tuple[int, ...] = ()  # also evaluate after these steps (log-spaced token curves)
    eval_batches: int = 20  # windows of batch_size x seq_len; 0: the whole validation split
    ckpt_every: int = 500  # 0: only at the end
    device: str = "auto"  # auto: cuda when available
    dtype: str = "auto"  # auto: bf16 autocast on cuda, fp32 on cpu
    compile: bool = False  # torch.compile the model
    compile_mode: str = "default"  # with compile: one of COMPILE_MODES
    tensorboard: bool = False  # also write TensorBoard events (needs `pip install tensorboard`)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if any(int(s) < 1 for s in self.eval_steps):
            raise ValueError(f"train.eval_steps must hold steps >= 1, got {self.eval_steps}")
        for name in ("eval_every", "eval_batches", "ckpt_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.device not in DEVICES:
            raise ValueError(f"train.device must be one of {list(DEVICES)}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"train.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"train.compile_mode must be one of {list(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"train.compile_mode={self.compile_mode!r} is a mode of the compiled step; set "
                             "train.compile=true too")
        if self.compile_mode == "reduce-overhead" and self.grad_accum > 1:
            raise ValueError(
                f"train.compile_mode='reduce-overhead' replays the step as CUDA graphs, whose gradients a second "
                f"micro-step would overwrite; it needs train.grad_accum=1, got {self.grad_accum} (raise "
                "train.batch_size instead, or keep compile_mode='default')"
            )
