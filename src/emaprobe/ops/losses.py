"""Token cross-entropy: ``cross_entropy(logits, target)``, the loss every language model here trains on.

Symbols: logits (..., V) over a vocabulary of V, target (...) of class indices, N the tokens (the
leading dims flattened); lse = logsumexp of a row.

Two forms, one result:

``torch``   ``F.cross_entropy`` over a float32 copy of the logits: the reference. Eagerly it writes
            that copy (4 bytes a logit) and runs softmax forward and backward over it; on one H200 those
            kernels took about 10 of a compiled SPEN-130m step's 43 ms at B16 T1024 before the loss was
            compiled too (``notes/kernels.md``, row "compiled cross-entropy").
``fused``   two Triton passes over the logits in their own dtype (``ops/triton/cross_entropy.py``): the
            forward reads them once and keeps each row's lse (4 bytes a token), the backward reads them
            again and writes the gradient; float32 inside. CUDA only. Its gradient keeps the logits'
            strides (rows the head pads stay padded), which eager autograd takes as they are; a compiled
            model's backward copied it to contiguous rows first, so compiled training keeps the
            compiled ``torch`` form (``train.lm.loss_function``).

``impl="auto"`` takes ``fused`` for CUDA logits of a dtype it takes and ``torch`` otherwise. Both reduce
as ``F.cross_entropy`` does: ``mean`` over the targets that are not ``ignore_index``, ``sum``, or
``none`` (the target's shape).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum", "none")
_FUSED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def naive_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Each token's loss (...), from ``log_softmax`` in float64: the check the fast forms are held to."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    keep = target != ignore_index
    picked = logp.gather(-1, torch.where(keep, target, 0).unsqueeze(-1)).squeeze(-1)
    return torch.where(keep, -picked, 0.0)


def _torch(logits: torch.Tensor, target: torch.Tensor, reduction: str, ignore_index: int) -> torch.Tensor:
    V = logits.shape[-1]
    out = F.cross_entropy(logits.float().reshape(-1, V), target.reshape(-1), reduction=reduction,
                          ignore_index=ignore_index)
    return out.view(target.shape) if reduction == "none" else out


class _FusedRows(torch.autograd.Function):
    """logits (N, V), target (N,) -> each row's loss (N,), float32; the backward's pass needs each row's lse."""

    @staticmethod
    def forward(ctx, logits, target, ignore_index):
        from emaprobe.ops.triton.cross_entropy import cross_entropy_fwd  # needs Triton: loaded on first use

        loss, lse = cross_entropy_fwd(logits, target, ignore_index)
        ctx.save_for_backward(logits, target, lse)
        ctx.ignore_index = ignore_index
        return loss

    @staticmethod
    def backward(ctx, g):
        from emaprobe.ops.triton.cross_entropy import cross_entropy_bwd

        logits, target, lse = ctx.saved_tensors
        return cross_entropy_bwd(logits, target, lse, g, ctx.ignore_index), None, None


def fused_rows(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """The fused form's per-token losses, logits (N, V) and target (N,) as the kernels take them."""
    return _FusedRows.apply(logits, target, ignore_index)


def _fused(logits: torch.Tensor, target: torch.Tensor, reduction: str, ignore_index: int) -> torch.Tensor:
    V = logits.shape[-1]
    rows = logits.reshape(-1, V)
    if rows.shape[1] and (rows.stride(1) != 1 or rows.stride(0) < V):  # the kernels' rows: unit stride, apart
        rows = rows.contiguous()
    loss = fused_rows(rows, target.reshape(-1).contiguous(), ignore_index)
    if reduction == "none":
        return loss.view(target.shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (target != ignore_index).sum()  # NaN when every target is ignored, as F's


# each form: (logits (..., V), target (...), reduction, ignore_index) -> the reduced loss, float32
CE_IMPLS: dict[str, Callable[[torch.Tensor, torch.Tensor, str, int], torch.Tensor]] = {
    "torch": _torch,
    "fused": _fused,
}


def available_ce_impls() -> list[str]:
    return sorted(CE_IMPLS) + ["auto"]


def resolve_ce_impl(impl: str, logits: torch.Tensor) -> str:
    """The form that runs: ``impl`` itself, or for ``"auto"`` ``fused`` on CUDA logits of a dtype it takes."""
    if impl == "auto":
        return "fused" if logits.is_cuda and logits.dtype in _FUSED_DTYPES else "torch"
    if impl not in CE_IMPLS:
        raise ValueError(f"unknown cross-entropy impl {impl!r}; choose one of {available_ce_impls()}")
    if impl == "fused" and not (logits.is_cuda and logits.dtype in _FUSED_DTYPES):
        raise ValueError(f"cross-entropy impl 'fused' takes CUDA logits of {[str(d) for d in _FUSED_DTYPES]}, "
                         f"got {logits.dtype} on {logits.device}; use 'torch' or 'auto'")
    return impl


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean", ignore_index: int = -100,
                  impl: str = "auto") -> torch.Tensor:
    """Next-token cross-entropy of logits (..., V) against target (...), in nats, computed in float32.

    ``reduction``: ``mean`` (over targets other than ``ignore_index``), ``sum`` or ``none``. ``impl``: a
    name of ``CE_IMPLS`` or ``auto`` (module docstring)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {list(REDUCTIONS)}")
    if logits.dim() < 1 or tuple(logits.shape[:-1]) != tuple(target.shape):
        raise ValueError(f"logits must be (..., V) over target's shape (...), got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")
    return CE_IMPLS[resolve_ce_impl(impl, logits)](logits, target, reduction, ignore_index)
