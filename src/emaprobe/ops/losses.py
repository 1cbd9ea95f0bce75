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
            model's backward copied it to contiguous rows first, a copy as large as the logits.

``linear_cross_entropy(h, weight, target)`` is the head and the loss together, the form training runs
(``LanguageModel.loss``): ``fused``, its logits are the first V columns of a product padded to
``HEAD_ROWS`` columns, and the backward multiplies their gradient, rows still padded, by the weight and
by h, inside one op that a compiler does not open.

``impl="auto"`` takes ``fused`` for CUDA logits of a dtype it takes and ``torch`` otherwise. Both reduce
as ``F.cross_entropy`` does: ``mean`` over the targets that are not ``ignore_index``, ``sum``, or
``none`` (the target's shape).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum", "none")
# the fused linear form pads the head's product to a multiple of this many columns (rows of the logits 16-byte
# aligned; nanoGPT's vocabulary of 50,304 for GPT-2's 50,257)
HEAD_ROWS = 64
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


def _reduce(loss: torch.Tensor, target: torch.Tensor, reduction: str, ignore_index: int) -> torch.Tensor:
    # each token's loss (N,) -> the loss as F.cross_entropy reduces it
    if reduction == "none":
        return loss.view(target.shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (target != ignore_index).sum()  # NaN when every target is ignored, as F's


def _fused(logits: torch.Tensor, target: torch.Tensor, reduction: str, ignore_index: int) -> torch.Tensor:
    V = logits.shape[-1]
    rows = logits.reshape(-1, V)
    if rows.shape[1] and (rows.stride(1) != 1 or rows.stride(0) < V):  # the kernels' rows: unit stride, apart
        rows = rows.contiguous()
    return _reduce(fused_rows(rows, target.reshape(-1).contiguous(), ignore_index), target, reduction, ignore_index)


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


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {list(REDUCTIONS)}")


def _as_indices(target: torch.Tensor) -> torch.Tensor:
    # class indices as int64, what both forms take; the models accept int32 and uint8 token ids too
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.is_complex() \
            or target.dtype == torch.bool:
        what = type(target).__name__ if not isinstance(target, torch.Tensor) else f"dtype {target.dtype}"
        raise ValueError(f"target must be a tensor of integer class indices, got {what}")
    return target if target.dtype == torch.int64 else target.long()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean", ignore_index: int = -100,
                  impl: str = "auto") -> torch.Tensor:
    """Next-token cross-entropy of logits (..., V) against target (...), in nats, computed in float32.

    ``reduction``: ``mean`` (over targets other than ``ignore_index``), ``sum`` or ``none``. ``impl``: a
    name of ``CE_IMPLS`` or ``auto`` (module docstring)."""
    _check_reduction(reduction)
    target = _as_indices(target)
    if logits.dim() < 1 or tuple(logits.shape[:-1]) != tuple(target.shape):
        raise ValueError(f"logits must be (..., V) over target's shape (...), got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")
    return CE_IMPLS[resolve_ce_impl(impl, logits)](logits, target, reduction, ignore_index)


# ---------------------------------------------------------------- the tied head and its loss together


def _linear_torch(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, reduction: str,
                  ignore_index: int) -> torch.Tensor:
    return _torch(F.linear(h, weight), target, reduction, ignore_index)


class _FusedLinearRows(torch.autograd.Function):
    """h (N, D), weight (V, D), target (N,) -> each row's loss of h weight^T (N,), float32."""

    @staticmethod
    def forward(ctx, h, weight, target, ignore_index):
        from emaprobe.ops.triton.cross_entropy import linear_cross_entropy_fwd

        loss, lse, logits, padded = linear_cross_entropy_fwd(h, weight, target, ignore_index, HEAD_ROWS)
        ctx.save_for_backward(h, padded, logits, target, lse)
        ctx.ignore_index, ctx.V = ignore_index, weight.shape[0]
        return loss

    @staticmethod
    def backward(ctx, g):
        from emaprobe.ops.triton.cross_entropy import linear_cross_entropy_bwd

        h, padded, logits, target, lse = ctx.saved_tensors
        return (*linear_cross_entropy_bwd(h, padded, logits, target, lse, g, ctx.ignore_index, ctx.V), None, None)


def _linear_fused(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, reduction: str,
                  ignore_index: int) -> torch.Tensor:
    kind = h.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else h.dtype  # F.linear's cast
    rows = h.reshape(-1, h.shape[-1]).to(dtype).contiguous()
    loss = _FusedLinearRows.apply(rows, weight.to(dtype), target.reshape(-1).contiguous(), ignore_index)
    return _reduce(loss, target, reduction, ignore_index)


# each form: (h (..., D), weight (V, D), target (...), reduction, ignore_index) -> the reduced loss, float32
LINEAR_CE_IMPLS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str, int], torch.Tensor]] = {
    "torch": _linear_torch,
    "fused": _linear_fused,
}


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
                         ignore_index: int = -100, impl: str = "auto") -> torch.Tensor:
    """``cross_entropy(F.linear(h, weight), target)``: the loss of a linear head, h (..., D) and weight (V, D),
    without handing its logits out.

    ``torch`` is exactly that. ``fused`` (CUDA; ``auto`` takes it there) computes the logits as the first V
    columns of a product padded to a multiple of ``HEAD_ROWS`` columns, runs the fused passes on them, and
    in the backward multiplies their gradient, rows still padded, by weight and by h. Apart, a compiled
    model hands its logits' gradient across the graph's edge contiguous, so padded rows are copied to and
    fro; inside one op nothing is copied. Under autocast both forms compute the logits in its dtype, as
    ``F.linear`` does. ``impl`` is chosen as ``cross_entropy``'s, with h in place of the logits."""
    _check_reduction(reduction)
    target = _as_indices(target)
    if h.dim() < 1 or tuple(h.shape[:-1]) != tuple(target.shape) or weight.dim() != 2 or weight.shape[1] != h.shape[-1]:
        raise ValueError(f"h must be (..., D) over target's shape (...) and weight (V, D), got {tuple(h.shape)}, "
                         f"{tuple(target.shape)} and {tuple(weight.shape)}")
    return LINEAR_CE_IMPLS[resolve_ce_impl(impl, h)](h, weight, target, reduction, ignore_index)
