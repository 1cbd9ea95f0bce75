"""Sequential reference scans: the specification every fast path is tested against.

Symbols (shared by every module in ``emaprobe.ops``):

    B   batch            T   time (dimension 1 of every sequence tensor)
    D   channels         S   timescales (one per EMA coefficient alpha_s)
    a   per-step decay   b   per-step input      h   state, h_t = a_t * h_{t-1} + b_t

These loops are slow on purpose: one Python step per time step, no tricks. They
accept any floating dtype (float64 included) and accumulate in at least float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def accum_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype scans accumulate in: the promoted input dtype, at least float32."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.promote_types(dtype, torch.float32)


def naive_linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    return_state: bool = False,
):
    """``h_t = a_t * h_{t-1} + b_t`` over dim 1, one step at a time.

    ``a`` and ``b`` broadcast to (B, T, *F); ``h0`` is (B, *F). Returns h in the
    promoted input dtype, and the final state (B, *F) in the accumulation dtype.
    """
    shape = torch.broadcast_shapes(a.shape, b.shape)
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    acc = accum_dtype(a, b) if h0 is None else accum_dtype(a, b, h0)
    a = a.expand(shape).to(acc)
    b = b.expand(shape).to(acc)
    h = torch.zeros((shape[0],) + tuple(shape[2:]), dtype=acc, device=b.device)
    if h0 is not None:
        h = h + h0.to(acc)
    outs = []
    for t in range(shape[1]):
        h = a[:, t] * h + b[:, t]
        outs.append(h)
    y = torch.stack(outs, dim=1).to(out_dtype)
    return (y, h) if return_state else y


def gate_inputs(
    logits: torch.Tensor, x: torch.Tensor, decay_bias: torch.Tensor, gate_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decays and inputs of ``gated_scan``, in the accumulation dtype (at least float32):

        a_t = sigmoid(logits[:, t, 0] + decay_bias)
        b_t = sigmoid(-(logits[:, t, 0] + decay_bias)) * sigmoid(logits[:, t, 1] + gate_bias) * x_t

    logits (B, T, 2, S, D), x (B, T, D) (shared by the S timescales), biases (S, D) -> a, b (B, T, S, D).
    """
    acc = accum_dtype(logits, x, decay_bias, gate_bias)
    la = logits[:, :, 0].to(acc) + decay_bias.to(acc)
    gate = torch.sigmoid(logits[:, :, 1].to(acc) + gate_bias.to(acc))
    return torch.sigmoid(la), torch.sigmoid(-la) * gate * x.to(acc).unsqueeze(2)


def naive_gated_scan(
    logits: torch.Tensor,
    x: torch.Tensor,
    decay_bias: torch.Tensor,
    gate_bias: torch.Tensor,
    h0: torch.Tensor | None = None,
    return_state: bool = False,
):
    """``naive_linear_scan`` of ``gate_inputs``: h (B, T, S, D) in x's dtype, and the final state (B, S, D)
    in the accumulation dtype."""
    y, h = naive_linear_scan(*gate_inputs(logits, x, decay_bias, gate_bias), h0, return_state=True)
    y = y.to(x.dtype)
    return (y, h) if return_state else y


def naive_ema_traces(
    x: torch.Tensor,
    alphas: Sequence[float] = (0.5, 0.1, 0.02),
    h0: torch.Tensor | None = None,
    return_state: bool = False,
):
    """``h_t^(s) = (1 - alpha_s) h_{t-1}^(s) + alpha_s x_t``; x (B,T,D) -> h (B,T,S,D)."""
    acc = accum_dtype(x)
    alpha = torch.tensor(list(alphas), dtype=acc, device=x.device).view(1, 1, -1, 1)
    b = alpha * x.to(acc).unsqueeze(2)  # (B, T, S, D)
    y, h = naive_linear_scan(1.0 - alpha, b, h0, return_state=True)
    y = y.to(x.dtype)
    return (y, h) if return_state else y
