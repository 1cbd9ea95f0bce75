"""Token cross-entropy over a large vocabulary in two Triton passes, without a float32 copy of the logits.

Symbols: N rows (tokens), V entries a row (the vocabulary), ``stride`` the distance between rows in
elements (V for contiguous logits), t a row's target, lse = log sum_j exp(x_j) its log-partition.

    forward    loss_n = lse_n - x_n[t_n]               one read of the logits; lse kept for the backward
    backward   dx_nj  = g_n (exp(x_nj - lse_n) - [j = t_n])   one read, one write, in the logits' dtype

That is three passes over the logits' bytes, the fewest a loss needs whose gradient is scaled by a
g known only in the backward. (Computing the gradient in the forward and scaling it in the backward,
as Liger-Kernel's cross-entropy does, saves one read when g is 1, but a model trained with gradient
accumulation hands the loss g = 1/steps, and testing g on the host would wait for the GPU.)

How a row is read: one program a row, its values in blocks of BLOCK, from the row's start rounded down
to 16 bytes (below). The blocks strictly inside the row, 1 to V // BLOCK - 1, take no mask; the first
and the last two do. A log-partition needs a running maximum; here every lane keeps its own (m, s),
updated with one exponential an element:
    x > m:  s <- s e^(m - x) + 1,  m <- x        else:  s <- s + e^(x - m)
(both are e^-|x - m|), so the loop has no reduction across lanes and no barrier; the lanes are
combined once at the end. This is the online softmax's normaliser (Milakov & Gimelshein 2018,
"Online normalizer calculation for softmax") kept per lane.

Alignment: GPT-2's vocabulary (50,257) puts most rows of a contiguous (N, V) bf16 tensor off a 16-byte
boundary, and a block that starts at a row's first element could then only load 2 bytes a lane. So a
program reads from the row's start rounded down to a 16-byte boundary and masks what lies outside the
row: every block is 16-byte aligned. A mask that starts mid-vector would cut the vectors to single
values (a first form masked every block: its backward took 3.2-4.1 ms at 16,384 x 50,257 bf16 on one
H100, against a 1.1 ms floor), so only the three blocks at a row's ends are masked.

Non-finite logits follow the reference (``F.cross_entropy`` over float32 logits): NaN anywhere in a row,
or +inf, makes the row's loss NaN; -inf entries have probability 0. A target outside [0, V) (other than
``ignore_index``) gives NaN for its row: the kernel does not stop the GPU for it (the check that would
raise is a device assert, which ends the CUDA context; on CPU, the reference raises).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from emaprobe.ops.triton import opaque

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
LOG2E = tl.constexpr(1.4426950408889634)

# one program a row; BLOCK values a loop step, 4 warps (16 values, 32 bytes of bf16, a thread a step)
BLOCK = 2048
NUM_WARPS = 4


@triton.jit
def _block(base, b0, b, offs, V, BLOCK: tl.constexpr, MASKED: tl.constexpr):
    # block b of a row: the indices of its values and which of them lie in the row. Blocks strictly
    # inside the row (1 .. V // BLOCK - 1) take no mask, so their loads and stores are 16-byte vectors
    idx = b0 + b * BLOCK + offs
    if MASKED:
        live = (idx >= base) & (idx < base + V)
    else:
        live = offs >= 0
    return idx, live


@triton.jit
def _fwd_block(X, m, s, base, b0, b, offs, V, BLOCK: tl.constexpr, MASKED: tl.constexpr):
    idx, live = _block(base, b0, b, offs, V, BLOCK, MASKED)
    if MASKED:
        x = tl.load(X + idx, mask=live, other=float("-inf")).to(tl.float32)
    else:
        x = tl.load(X + idx).to(tl.float32)
    e = tl.exp2(-tl.abs(x - m) * LOG2E)
    # a -inf value adds nothing (and -inf - -inf would be NaN); NaN passes (NaN != -inf) and poisons s
    take = x != float("-inf")
    s = tl.where(take, tl.where(x > m, s * e + 1.0, s + e), s)
    m = tl.where(take, tl.maximum(m, x), m)
    return m, s


@triton.jit
def _ce_fwd_kernel(X, TGT, LOSS, LSE, V, stride, ignore_index, NFULL, TAIL,
                   ALIGN: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = row * stride
    b0 = tl.multiple_of((base // ALIGN) * ALIGN, ALIGN)  # the row's start rounded down to 16 bytes
    offs = tl.arange(0, BLOCK)
    m = tl.full((BLOCK,), float("-inf"), tl.float32)  # each lane's running maximum
    s = tl.zeros((BLOCK,), tl.float32)  # and its sum of e^(x - m)
    m, s = _fwd_block(X, m, s, base, b0, 0, offs, V, BLOCK, True)
    for b in range(1, NFULL):
        m, s = _fwd_block(X, m, s, base, b0, b, offs, V, BLOCK, False)
    for b in range(TAIL, NFULL + 2):
        m, s = _fwd_block(X, m, s, base, b0, b, offs, V, BLOCK, True)
    mx = tl.max(m, 0)
    lse = mx + tl.log(tl.sum(s * tl.exp2((m - mx) * LOG2E), 0))
    t = tl.load(TGT + row).to(tl.int64)
    valid = (t >= 0) & (t < V)
    xt = tl.load(X + base + tl.where(valid, t, 0)).to(tl.float32)
    loss = tl.where(t == ignore_index, 0.0, tl.where(valid, lse - xt, float("nan")))
    tl.store(LOSS + row, loss)
    tl.store(LSE + row, lse)


@triton.jit
def _bwd_block(X, DX, lse, g, t, base, b0, b, offs, V, BLOCK: tl.constexpr, MASKED: tl.constexpr):
    idx, live = _block(base, b0, b, offs, V, BLOCK, MASKED)
    if MASKED:
        x = tl.load(X + idx, mask=live, other=0.0).to(tl.float32)
    else:
        x = tl.load(X + idx).to(tl.float32)
    hit = (offs + (b0 - base + b * BLOCK)) == t  # the target's entry: its index within the row is t
    d = g * (tl.exp2((x - lse) * LOG2E) - tl.where(hit, 1.0, 0.0))
    if MASKED:
        tl.store(DX + idx, d.to(DX.dtype.element_ty), mask=live)
    else:
        tl.store(DX + idx, d.to(DX.dtype.element_ty))


@triton.jit
def _ce_bwd_kernel(X, TGT, LSE, G, DX, V, stride, g_stride, ignore_index, NFULL, TAIL,
                   ALIGN: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = row * stride
    b0 = tl.multiple_of((base // ALIGN) * ALIGN, ALIGN)
    offs = tl.arange(0, BLOCK)
    t = tl.load(TGT + row).to(tl.int64)
    lse = tl.load(LSE + row)
    g = tl.where(t == ignore_index, 0.0, tl.load(G + row * g_stride).to(tl.float32))
    _bwd_block(X, DX, lse, g, t, base, b0, 0, offs, V, BLOCK, True)
    for b in range(1, NFULL):
        _bwd_block(X, DX, lse, g, t, base, b0, b, offs, V, BLOCK, False)
    for b in range(TAIL, NFULL + 2):
        _bwd_block(X, DX, lse, g, t, base, b0, b, offs, V, BLOCK, True)


def check_rows(logits: torch.Tensor, target: torch.Tensor) -> None:
    """The kernels' contract: logits (N, V) of a supported dtype, unit stride along V and rows at least V
    apart; target (N,) of integers, contiguous, on the same device."""
    if logits.dim() != 2 or target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"logits must be (N, V) and target (N,), got {tuple(logits.shape)} and {tuple(target.shape)}")
    _check_dtypes(logits, target)
    if logits.shape[1] and (logits.stride(1) != 1 or logits.stride(0) < logits.shape[1]):
        raise ValueError(f"logits need unit stride along V and rows at least V apart, got strides {logits.stride()}")


def _check_dtypes(x: torch.Tensor, target: torch.Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the fused cross-entropy takes {[str(d) for d in SUPPORTED_DTYPES]}, got {x.dtype}")
    if target.dtype not in (torch.int64, torch.int32) or target.device != x.device or not target.is_contiguous():
        raise ValueError(f"target must be contiguous int64 or int32 on {x.device}, got {target.dtype} on "
                         f"{target.device} with stride {target.stride()}")


def _blocks(V: int) -> tuple[int, int]:
    # NFULL = V // BLOCK: blocks 1 .. NFULL - 1 lie inside every row, whatever its alignment; the masked
    # tail is blocks TAIL = max(NFULL, 1) to NFULL + 1 (a row spans at most V + ALIGN - 1 values from b0)
    nfull = V // BLOCK
    return nfull, max(nfull, 1)


def _align(dtype: torch.dtype) -> int:
    return 16 // torch.empty((), dtype=dtype).element_size()


def _fwd(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    N, V = logits.shape
    loss = logits.new_empty(N, dtype=torch.float32)
    lse = logits.new_empty(N, dtype=torch.float32)
    if N:
        _ce_fwd_kernel[(N,)](logits, target, loss, lse, V, logits.stride(0), ignore_index, *_blocks(V),
                             ALIGN=_align(logits.dtype), BLOCK=BLOCK, num_warps=NUM_WARPS)
    return loss, lse


def _bwd(logits: torch.Tensor, target: torch.Tensor, lse: torch.Tensor, g: torch.Tensor,
         ignore_index: int, dx: torch.Tensor | None = None) -> torch.Tensor:
    # the gradient has the logits' strides, so its stores line up with the loads. (A compiled model's
    # backward wants its logits' gradient contiguous, and copies one with padded rows: ops/losses.py)
    N, V = logits.shape
    if dx is None:
        dx = torch.empty_strided((N, V), logits.stride(), dtype=logits.dtype, device=logits.device)
    elif dx.shape != logits.shape or dx.stride() != logits.stride() or dx.dtype != logits.dtype:
        raise ValueError(f"dx must have the logits' shape, strides and dtype (the kernel writes it at their "
                         f"offsets), got {tuple(dx.shape)} {dx.stride()} {dx.dtype}")
    if N:
        _ce_bwd_kernel[(N,)](logits, target, lse, g, dx, V, logits.stride(0), g.stride(0), ignore_index,
                             *_blocks(V), ALIGN=_align(logits.dtype), BLOCK=BLOCK, num_warps=NUM_WARPS)
    return dx


def cross_entropy_fwd(logits: torch.Tensor, target: torch.Tensor,
                      ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (N, V), target (N,) -> (loss (N,), lse (N,)), float32; loss 0 where target == ignore_index."""
    check_rows(logits, target)
    if torch.compiler.is_compiling():
        return torch.ops.emaprobe.cross_entropy_fwd(logits, target, ignore_index)
    return _fwd(logits, target, ignore_index)


def cross_entropy_bwd(logits: torch.Tensor, target: torch.Tensor, lse: torch.Tensor, g: torch.Tensor,
                      ignore_index: int = -100) -> torch.Tensor:
    """d(sum_n g_n loss_n)/d logits (N, V), in the logits' dtype and strides; g (N,) may be expanded."""
    if torch.compiler.is_compiling():
        return torch.ops.emaprobe.cross_entropy_bwd(logits, target, lse, g, ignore_index)
    return _bwd(logits, target, lse, g, ignore_index)


def _linear_fwd(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, ignore_index: int,
                pad_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # the logits h W^T as the first V columns of an (N, Vp) product with W's rows padded by zeros: every row
    # of the logits 16-byte aligned; the padded weight is kept for the backward
    V = weight.shape[0]
    padded = F.pad(weight, (0, 0, 0, -V % pad_rows))
    logits = torch.mm(h, padded.t())
    loss, lse = _fwd(logits[:, :V], target, ignore_index)
    return loss, lse, logits, padded


def _linear_bwd(h: torch.Tensor, padded: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, lse: torch.Tensor,
                g: torch.Tensor, ignore_index: int, V: int) -> tuple[torch.Tensor, torch.Tensor]:
    # the products run over all Vp columns, the padding's gradient zero: with V itself as the inner size of
    # dh = dlogits W (GPT-2's 50,257) cuBLAS took an align-1 kernel, 10.0 ms against 1.5-1.8 on one H100
    dlogits = torch.empty_like(logits)
    dlogits[:, V:].zero_()
    _bwd(logits[:, :V], target, lse, g, ignore_index, dx=dlogits[:, :V])
    return torch.mm(dlogits, padded), torch.mm(dlogits.t(), h)[:V]


def linear_cross_entropy_fwd(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, ignore_index: int = -100,
                             pad_rows: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """h (N, D), weight (V, D), target (N,) -> (loss (N,), lse (N,), logits (N, Vp), padded (Vp, D)): the loss
    of the logits h weight^T, kept as the first V columns of ``logits``, the product of h and ``padded``,
    weight with zero rows to Vp (V rounded up to ``pad_rows``)."""
    if (h.dim() != 2 or weight.dim() != 2 or target.dim() != 1 or h.shape[1] != weight.shape[1]
            or target.shape[0] != h.shape[0] or h.dtype != weight.dtype):
        raise ValueError(f"h must be (N, D), weight (V, D) of h's dtype and target (N,), got {tuple(h.shape)} "
                         f"{h.dtype}, {tuple(weight.shape)} {weight.dtype} and {tuple(target.shape)}")
    _check_dtypes(h, target)
    if torch.compiler.is_compiling():
        return torch.ops.emaprobe.linear_cross_entropy_fwd(h, weight, target, ignore_index, pad_rows)
    return _linear_fwd(h, weight, target, ignore_index, pad_rows)


def linear_cross_entropy_bwd(h: torch.Tensor, padded: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                             lse: torch.Tensor, g: torch.Tensor, ignore_index: int, V: int
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients (dh (N, D), dweight (V, D)) of sum_n g_n loss_n, from the forward's outputs."""
    if torch.compiler.is_compiling():
        return torch.ops.emaprobe.linear_cross_entropy_bwd(h, padded, logits, target, lse, g, ignore_index, V)
    return _linear_bwd(h, padded, logits, target, lse, g, ignore_index, V)


opaque.implement("cross_entropy_fwd", _fwd)
opaque.implement("cross_entropy_bwd", _bwd)
opaque.implement("linear_cross_entropy_fwd", _linear_fwd)
opaque.implement("linear_cross_entropy_bwd", _linear_bwd)
