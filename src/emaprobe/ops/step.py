"""Step (recurrent) form: one token at a time, O(1) state, for streaming and generation.

Symbols as in ``naive.py``. Running ``ema_step`` over a sequence reproduces
``ema_traces``; ``tests/ops/test_scan.py`` checks it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from emaprobe.ops.naive import accum_dtype
from emaprobe.ops.scan import DEFAULT_ALPHAS, _check_alphas, _check_devices, _check_float, _check_h0
from emaprobe.ops.triton.cache import cached


def _make_step_coefs(vals: tuple[float, ...], device: torch.device,
                     dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = torch.tensor(vals, dtype=dtype, device=device).view(1, -1, 1)
    return alpha, 1.0 - alpha


def _step_coefs(vals: tuple[float, ...], device: torch.device,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, 1 - alpha), each (1, S, 1) in ``dtype``, made once per (alphas, device, dtype): a decode
    step runs ema_step once a layer a token, and on CUDA each fresh tensor was a host-to-device copy."""
    return cached("ema_step_coefs", _make_step_coefs, vals, device, dtype)


def linear_scan_step(a_t: torch.Tensor, b_t: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
    """One step ``h <- a_t * h + b_t``; a_t and b_t broadcast to (B, *F), h (B, *F) exactly.

    The state is in the accumulation dtype of the inputs, at least float32 (float64 for float64
    inputs), as ``linear_scan``'s."""
    _check_float("a_t", a_t)
    _check_float("b_t", b_t)
    shape = torch.broadcast_shapes(a_t.shape, b_t.shape)
    if h is None:
        _check_devices(a_t=a_t, b_t=b_t)
        return torch.broadcast_to(b_t, shape).to(accum_dtype(a_t, b_t))
    _check_h0(h, tuple(shape), "the broadcast shape of a_t and b_t", name="h")
    _check_devices(a_t=a_t, b_t=b_t, h=h)
    acc = accum_dtype(a_t, b_t, h)
    return torch.addcmul(b_t.to(acc), a_t.to(acc), h.to(acc))


def ema_step(
    x_t: torch.Tensor, h: torch.Tensor | None = None, alphas: Sequence[float] = DEFAULT_ALPHAS
) -> torch.Tensor:
    """One EMA step: x_t (B, D), h (B, S, D) -> new h (B, S, D), in the accumulation dtype (at least
    float32; float64 for float64 inputs, as ``ema_traces``'s state)."""
    _check_float("x_t", x_t)
    if x_t.dim() != 2:
        raise ValueError(f"x_t must have shape (B, D), got {tuple(x_t.shape)}")
    vals = _check_alphas(alphas)
    if h is not None:
        _check_h0(h, (x_t.shape[0], len(vals), x_t.shape[1]), "(B, S, D)", name="h")
        _check_devices(x_t=x_t, h=h)
    acc = accum_dtype(x_t) if h is None else accum_dtype(x_t, h)
    alpha, decay = _step_coefs(tuple(vals), x_t.device, acc)
    b = alpha * x_t.to(acc).unsqueeze(1)  # (B, S, D)
    if h is None:
        return b
    return torch.addcmul(b, decay, h.to(acc))
