"""The top-k mask of a k-winners-take-all layer in one Triton pass: h = a where a is among the
k largest of its row, 0 elsewhere. It replaces ``torch.topk`` and the scatter into a zero code.

Symbols: N rows (tokens), F entries a row (d_ff units), k kept a row, BLOCK = F rounded up to a
power of two (one row a program, held in registers).

How a program finds its row's k-th largest value without sorting: each value is mapped to an
integer key of the same order (the float's bits, negatives' magnitude bits flipped, then
offset to be non-negative), and the k-th largest key is built bit by bit from the top: a bit
stays set when at least k keys are >= the prefix with it set. That is one count (a reduction
over the row) per key bit: 16 for bf16, 19 for fp16 (the fp32 bits a narrower float uses), 32
for float32. Keys above the threshold are kept; of the keys equal to it, the first ones by index
fill the row up to k (``tl.cumsum``). The radix select is the one of GPU top-k and sorting
libraries (e.g. Alabi et al. 2012, "Fast k-selection algorithms for graphics processing
units"), here in registers, one row a program, with the tie rule made explicit. With ``RELU``
the row is relu(a), taken as it is loaded, so a relu before the mask needs no pass of its own.

``ops/sparse_ffn.py`` holds the reference of the same rule (a stable descending sort), used
on every other device and dtype, and the autograd around both.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# bits of the order key: a narrower float's fp32 form has its low mantissa bits all zero (all one
# once a negative's are flipped), so its keys differ only in the top bits
_KEY_BITS = {torch.bfloat16: 16, torch.float16: 19, torch.float32: 32}
SUPPORTED_DTYPES = tuple(_KEY_BITS)


@triton.jit
def _topk_mask_kernel(A, H, F, k, BLOCK: tl.constexpr, KEY_BITS: tl.constexpr, RELU: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    live = offs < F
    a = tl.load(A + row * F + offs, mask=live, other=0.0)
    if RELU:  # relu(a), NaN kept as F.relu keeps it; compared in float32 (on bf16, Triton 3.9's
        af = a.to(tl.float32)  # interpreter did not apply it)
        a = tl.where(af < 0, 0.0, af).to(a.dtype)
    bits = a.to(tl.float32).to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # signed, in the floats' order (-0 just below +0)
    if KEY_BITS == 32:
        u = tl.where(live, key.to(tl.int64) + 2147483647 + 1, -1)  # in [0, 2^32); padding below every key
    else:
        u = tl.where(live, (key >> (32 - KEY_BITS)) + (1 << (KEY_BITS - 1)), -1)  # int32, in [0, 2^KEY_BITS)
    one = tl.full((), 1, u.dtype)
    t = tl.zeros((), u.dtype)
    for b in tl.static_range(KEY_BITS - 1, -1, -1):
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
    # H200, 16384 rows of 3072 bf16 (SPEN-130m's FFN at B16 T1024): 1/2/4/8/16 warps took
    # 0.570/0.339/0.335/0.321/0.420 ms, against 0.648 for torch.topk + scatter (notes/kernels.md)
    return max(1, min(8, block // 256))


def topk_mask_triton(a: torch.Tensor, k: int, relu: bool = False) -> torch.Tensor:
    """a (..., F) on CUDA, bf16, fp16 or float32 -> h (..., F): the k largest of each row kept
    (ties at the k-th value: the lowest indices), zeros elsewhere; with ``relu``, of relu(a)."""
    if a.dtype not in _KEY_BITS:
        raise ValueError(f"topk_mask_triton takes {[str(d) for d in SUPPORTED_DTYPES]}, got {a.dtype}")
    F = a.shape[-1]
    a2 = a.reshape(-1, F).contiguous()
    h = torch.empty_like(a2)
    if a2.shape[0]:
        block = triton.next_power_of_2(F)
        _topk_mask_kernel[(a2.shape[0],)](
            a2, h, F, k, BLOCK=block, KEY_BITS=_KEY_BITS[a.dtype], RELU=relu, num_warps=_num_warps(block)
        )
    return h.view(a.shape)
