"""The top-k mask of a k-winners-take-all layer in one Triton pass: h = a where a is among the
k largest of its row, 0 elsewhere. It replaces ``torch.topk`` and the scatter into a zero code.

Symbols: N rows (tokens), F entries a row (d_ff units), k kept a row, BLOCK = F rounded up to a
power of two (one row a program, held in registers).

How a program finds its row's k-th largest value without sorting: each value is mapped to an
integer key of the same order (the float's bits, negatives' magnitude bits flipped, then
offset to be non-negative), and the k-th largest key is built bit by bit from the top: a bit
stays set when at least k keys are >= the prefix with it set. That is one count (a reduction
over the row) per key bit: 16 for bf16 and fp16 rows, whose low fp32 bits are zero, 32 for
float32. Keys above the threshold are kept; of the keys equal to it, the first ones by index
fill the row up to k (``tl.cumsum``). The radix select is the one of GPU top-k and sorting
libraries (e.g. Alabi et al. 2012, "Fast k-selection algorithms for graphics processing
units"), here in registers, one row a program, with the tie rule made explicit.

``ops/sparse_ffn.py`` holds the reference of the same rule (a stable descending sort), used
on every other device and dtype, and the autograd around both.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# low key bits that are always zero: the fp32 mantissa bits a narrower float does not have
_LOW_BIT = {torch.bfloat16: 16, torch.float16: 13, torch.float32: 0}
SUPPORTED_DTYPES = tuple(_LOW_BIT)


@triton.jit
def _topk_mask_kernel(A, H, F, k, BLOCK: tl.constexpr, LOW_BIT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    live = offs < F
    a = tl.load(A + row * F + offs, mask=live, other=0.0)
    bits = a.to(tl.float32).to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # signed order of the floats (-0 just below +0)
    u = tl.where(live, key.to(tl.int64) + 2147483647 + 1, -1)  # in [0, 2^32); padding below every key
    one = tl.full((), 1, tl.int64)
    t = tl.zeros((), tl.int64)
    for b in tl.static_range(31, LOW_BIT - 1, -1):
        cand = t | (one << b)
        n = tl.sum((u >= cand).to(tl.int32), axis=0)
        t = tl.where(n >= k, cand, t)
    # t is the k-th largest key: keep all above it, and the first of those equal to it
    above = u > t
    need = k - tl.sum(above.to(tl.int32), axis=0)
    equal = u == t
    rank = tl.cumsum(equal.to(tl.int32), axis=0)  # 1-based rank among the equal keys, by index
    keep = above | (equal & (rank <= need))
    tl.store(H + row * F + offs, tl.where(keep, a, 0.0).to(a.dtype), mask=live)


def _num_warps(block: int) -> int:
    return max(1, min(16, block // 256))


def topk_mask_triton(a: torch.Tensor, k: int) -> torch.Tensor:
    """a (..., F) on CUDA, bf16, fp16 or float32 -> h (..., F): the k largest of each row kept
    (ties at the k-th value: the lowest indices), zeros elsewhere."""
    if a.dtype not in _LOW_BIT:
        raise ValueError(f"topk_mask_triton takes {[str(d) for d in SUPPORTED_DTYPES]}, got {a.dtype}")
    F = a.shape[-1]
    a2 = a.reshape(-1, F).contiguous()
    h = torch.empty_like(a2)
    if a2.shape[0]:
        block = triton.next_power_of_2(F)
        _topk_mask_kernel[(a2.shape[0],)](
            a2, h, F, k, BLOCK=block, LOW_BIT=_LOW_BIT[a.dtype], num_warps=_num_warps(block)
        )
    return h.view(a.shape)
