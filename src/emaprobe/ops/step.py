"""Step (recurrent) form: one token at a time, O(1) state, for streaming and generation.

Symbols as in ``naive.py``. Running ``ema_step`` over a sequence reproduces
``ema_traces``; ``tests/ops/test_scan.py`` checks it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from emaprobe.ops.scan import DEFAULT_ALPHAS, _check_alphas, _check_float
from emaprobe.ops.triton.cache import cached


def _make_step_coefs(vals: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = torch.tensor(vals, dtype=torch.float32, device=device).view(1, -1, 1)
    return alpha, 1.0 - alpha


def _step_coefs(vals: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, 1 - alpha), each (1, S, 1) float32, made once per (alphas, device): a decode step
    runs ema_step once a layer a token, and on CUDA each fresh tensor was a host-to-device copy."""
    return cached("ema_step_coefs", _make_step_coefs, vals, device)


def linear_scan_step(a_t: torch.Tensor, b_t: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
    """One step ``h <- a_t * h + b_t``; all (B, *F). The state stays float32."""
    _check_float("a_t", a_t)
    _check_float("b_t", b_t)
    if h is None:
        return torch.broadcast_to(b_t, torch.broadcast_shapes(a_t.shape, b_t.shape)).float()
    return torch.addcmul(b_t.float(), a_t.float(), h.float())


def ema_step(
    x_t: torch.Tensor, h: torch.Tensor | None = None, alphas: Sequence[float] = DEFAULT_ALPHAS
) -> torch.Tensor:
    """One EMA step: x_t (B, D), h (B, S, D) float32 -> new h (B, S, D) float32."""
    _check_float("x_t", x_t)
    if x_t.dim() != 2:
        raise ValueError(f"x_t must have shape (B, D), got {tuple(x_t.shape)}")
    vals = _check_alphas(alphas)
    alpha, decay = _step_coefs(tuple(vals), x_t.device)
    b = alpha * x_t.float().unsqueeze(1)  # (B, S, D)
    if h is None:
        return b
    want = (x_t.shape[0], len(vals), x_t.shape[1])
    if tuple(h.shape) != want:
        raise ValueError(f"h must have shape {want} (B, S, D), got {tuple(h.shape)}")
    return torch.addcmul(b, decay, h.float())
