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

The code SPEN trains with (bf16, relu inside, an even F) takes a second kernel,
``_relu_pair_kernel``, that makes the same selection in less than half the instructions: the
bit-by-bit kernel is bound by issue, not by its bytes (0.32 ms at 16,384 x 3072 on the H200, 6.7x
its copy floor). A relu'd bf16 is non-negative, so its 15 low bits are its order key, and two keys
share an int32 word with a guard bit above each (bits 15 and 31). One subtraction compares both
keys of a word with the candidate, ``(word | guards) - cand * 0x10001``: each guard survives
exactly where its key is >= cand, and no borrow crosses from the low key into the high one; a
shift and a mask count both in two 16-bit lanes of one int32. The row is held as two power-of-two
parts (3072 bf16 are 1024 + 512 words: no padding lanes), at most 24 words a thread (four warps
at 3072, 12 a thread; one at 1536 and below, where a count is one warp reduction with no barrier),
as keys alone: a kept half is written from its key, and ties at the k-th key are broken by index in
registers (a prefix count of the equal halves, in every row: bf16 codes tie there in most rows of
3072, so a second pass over the row for them ran in most rows). NaN of either sign is kept as the
largest value, as the reference's sort keeps it (written without its sign bit).

**Bits for the backward.** The mask's gradient is gh where h != 0. Read from h, that backward moves
6 bytes a unit (gh and h in, dh out). Where F is a multiple of 8, the pair kernel also writes the
nonzero halves of each row it stores as bits, one byte for 4 words (``_store_bits``), and the backward
(``_unmask_kernel``) reads gh and the bits: 4.125 bytes a unit.

``ops/sparse_ffn.py`` holds the reference of the same rule (a stable descending sort), used
on every other device and dtype, and the autograd around both.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from emaprobe.ops.triton import opaque

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
    if RELU:  # relu(a), compared in float32 (on bf16, Triton 3.9's interpreter did not apply it);
        af = a.to(tl.float32)  # -0 becomes +0 and NaN loses its sign, so NaN is the largest key
        a = tl.where(af < 0, 0.0, tl.abs(af)).to(a.dtype)
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


# the guard bits of two 15-bit keys in an int32 word (0x80008000)
_GUARDS = tl.constexpr(-2147450880)


@triton.jit
def _guarded_keys(A32, base, offs, W):
    """Words of two bf16 -> (their relu'd 15-bit keys, a guard bit above each (bits 15 and 31); live).
    A half whose sign bit is set keys 0 unless it is NaN (low 15 bits above 0x7F80: then its
    magnitude). A kept half is written as its key: relu(a) itself, and a NaN without its sign."""
    live = offs < W
    w = tl.load(A32 + base + offs, mask=live, other=0)
    nan = ((w & 0x7FFF7FFF) + 0x007F007F) & _GUARDS  # a guard bit where the half is NaN
    neg = (w & _GUARDS) & ~nan
    return (w & ~(((neg >> 15) & 0x10001) * 0xFFFF)) | _GUARDS, live


@triton.jit
def _at_least(keys, c):
    """Per word: a 1 in bit 0 (bit 16) where the low (high) key is >= c, for 0 <= c <= 0x8000."""
    return ((keys - c * 0x10001) >> 15) & 0x10001


@triton.jit
def _lanes(v):
    return (v & 0xFFFF) + ((v >> 16) & 0xFFFF)


@triton.jit
def _kept_words(x, above, equal, need, before):
    """x with each half zeroed unless its key is above the k-th (``above``), or equal to it
    (``equal``) among the first ``need`` such halves of the row by index (``before`` of them lie in
    words before these); ``above`` and ``equal`` as ``_at_least`` gives them, per half."""
    seen = _lanes(tl.cumsum(equal, axis=0)) + before  # equals up to each word's high half, inclusive
    lo = ((seen - (equal >> 16)) <= need).to(tl.int32) & equal
    hi = ((seen <= need).to(tl.int32) << 16) & equal
    return x & ((above | lo | hi) * 0xFFFF)


@triton.jit
def _parts_sum(xa, xb, BA: tl.constexpr, BB: tl.constexpr):
    """The sum of a row's two parts (BA and BB elements, BA a multiple of BB) in one reduction across
    threads: part a folded onto part b's shape first, with no data moved where a thread holds
    elements BB apart (BB at least a thread's elements times the threads: 3072 and 1536 bf16). At
    two warps and 3072 each count then takes three barriers where two reductions took six (sm_90
    SASS: 58 barriers a row against 106); on an H100 it took four warps there from 152.5 to 137.8 us
    a launch of 16,384 rows, and two from 147.8 to 149.2 (notes/kernels.md)."""
    return tl.sum(tl.sum(tl.reshape(xa, (BA // BB, BB)), axis=0) + xb, axis=0)


@triton.jit
def _store_bits(BITS, base, start, out, NW: tl.constexpr, W):
    """The nonzero halves of ``out``, words [start, start + NW) of a row as written (sign bits clear), as
    the row's bytes [start / 4, (start + NW) / 4) of BITS: bit j of byte i is half 8 i + j (a word's
    low half first). A kept zero passes no gradient (relu's slope there is 0), so nonzero is what
    the backward needs. NW and start multiples of 4; bytes at or past W / 4 are not stored."""
    nz = _at_least(out | _GUARDS, 1)
    two = tl.reshape((nz & 1) | ((nz >> 15) & 2), (NW // 4, 4))  # 2 bits a word
    byte = tl.sum(two << (2 * tl.arange(0, 4))[None, :], axis=1)
    ob = start // 4 + tl.arange(0, NW // 4)
    tl.store(BITS + base + ob, byte.to(tl.uint8), mask=ob < W // 4)


@triton.jit
def _unmask_kernel(GH, BITS, DH, NB, BLOCK: tl.constexpr):
    """dh = gh at the halves whose bit is set, 0 elsewhere: BLOCK bytes of BITS (4 BLOCK words of the
    flattened gh) a program, NB bytes in all."""
    ob = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = ob < NB
    byte = tl.load(BITS + ob, mask=live, other=0).to(tl.int32)
    j = tl.arange(0, 4)
    two = (byte[:, None] >> (2 * j)[None, :]) & 3  # (BLOCK, 4): a word's two bits
    keep = (two & 1) * 0xFFFF | (two >> 1) * -65536  # 0xFFFF0000 where the high half passes
    ow = ob[:, None] * 4 + j[None, :]
    GH32 = GH.to(tl.pointer_type(tl.int32))
    DH32 = DH.to(tl.pointer_type(tl.int32))
    tl.store(DH32 + ow, tl.load(GH32 + ow, mask=live[:, None], other=0) & keep, mask=live[:, None])


@triton.jit
def _relu_pair_kernel(A, H, BITS, W, k, BA: tl.constexpr, BB: tl.constexpr, WITH_BITS: tl.constexpr):
    """One row of 2W bf16 a program: words [0, BA) in part a, [BA, BA + BB) in part b (BB = 0: none).
    Only the guarded keys stay in registers, and a kept half is written from its key. Ties at the k-th
    key are broken by index in registers, a prefix count of the equal halves, in every row: bf16 codes
    tie there often (most rows of 3072 random normals), so a branch for rows without ties saves little.
    With WITH_BITS (W a multiple of 4), the halves that pass a gradient go to BITS as well
    (``_store_bits``)."""
    row = tl.program_id(0).to(tl.int64)
    A32 = A.to(tl.pointer_type(tl.int32))
    H32 = H.to(tl.pointer_type(tl.int32))
    base = row * W
    oa = tl.arange(0, BA)
    ga, la = _guarded_keys(A32, base, oa, W)
    if BB > 0:
        ob = BA + tl.arange(0, BB)
        gb, lb = _guarded_keys(A32, base, ob, W)
    t = tl.zeros((), tl.int32)
    for b in tl.static_range(14, -1, -1):  # the k-th largest 15-bit key, bit by bit from the top
        cand = t | (1 << b)
        if BB > 0:
            n = _parts_sum(_at_least(ga, cand), _at_least(gb, cand), BA, BB)
        else:
            n = tl.sum(_at_least(ga, cand), axis=0)
        t = tl.where(_lanes(n) >= k, cand, t)
    # per half: above t, or equal to it (padding words are neither); all flags first, then the
    # stores: this order took two warps at 3072 from 168 sm_90 registers to 128
    above_a = _at_least(ga, t + 1)
    equal_a = tl.where(la, _at_least(ga, t) ^ above_a, 0)
    n_equal_a = tl.sum(equal_a, axis=0)
    if BB > 0:
        above_b = _at_least(gb, t + 1)
        equal_b = tl.where(lb, _at_least(gb, t) ^ above_b, 0)
        n_above = _parts_sum(above_a, above_b, BA, BB)
    else:
        n_above = tl.sum(above_a, axis=0)
    need = k - _lanes(n_above)
    outa = _kept_words(ga & 0x7FFF7FFF, above_a, equal_a, need, 0)
    tl.store(H32 + base + oa, outa, mask=la)
    if WITH_BITS:
        _store_bits(BITS, row * (W // 4), 0, outa, BA, W)
    if BB > 0:
        outb = _kept_words(gb & 0x7FFF7FFF, above_b, equal_b, need, _lanes(n_equal_a))
        tl.store(H32 + base + ob, outb, mask=lb)
        if WITH_BITS:
            _store_bits(BITS, row * (W // 4), BA, outb, BB, W)


def _num_warps(block: int) -> int:
    # H200, 16384 rows of 3072 bf16 (SPEN-130m's FFN at B16 T1024): 1/2/4/8/16 warps took
    # 0.570/0.339/0.335/0.321/0.420 ms, against 0.648 for torch.topk + scatter (notes/kernels.md)
    return max(1, min(8, block // 256))


def _pair_warps(words: int) -> int:
    # one warp up to 768 words, then 12-24 words a thread: two warps below 1536 words, four from 1536,
    # more past 3072. H100, 16384 rows, k = 6%, this kernel (ties in registers, bits, one reduction a
    # count): 3072 bf16 (1536 words) took 157.3 / 149.8 / 140.2 / 815.6 us at 1 / 2 / 4 / 8 warps, 1536
    # bf16 68.7 / 71.5 / 430.3 at 1 / 2 / 4: at 6 words a thread it fell off a cliff both times
    # (notes/kernels.md, row "mask, warps after one reduction a count")
    if words <= 768:
        return 1
    return 2 if words < 1536 else max(4, triton.next_power_of_2(-(-words // 768)))


def pair_parts(words: int) -> tuple[int, int]:
    """A row of ``words`` int32 words as two power-of-two parts: the largest power of two, then the
    rest rounded up (0 when there is none)."""
    first = 1 << (words.bit_length() - 1)
    rest = words - first
    return first, triton.next_power_of_2(rest) if rest else 0


def takes_pairs(a2: torch.Tensor, relu: bool) -> bool:
    """Whether ``_relu_pair_kernel`` takes the rows of a2 (N, F), contiguous: bf16 with relu, F even,
    rows on 4-byte boundaries, and at most 2^15 - 1 words a row (a lane's count must fit 16 bits)."""
    F = a2.shape[-1]
    return relu and a2.dtype == torch.bfloat16 and F % 2 == 0 and 0 < F < 1 << 16 and a2.data_ptr() % 4 == 0


def _pack_bits(h: torch.Tensor) -> torch.Tensor:
    """(..., F) -> (..., F / 8) uint8, bit j of byte i set where h[..., 8 i + j] != 0 (the kernels' order)."""
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8, device=h.device)
    return (h.unflatten(-1, (-1, 8)) != 0).to(torch.uint8).mul_(weights).sum(-1, dtype=torch.uint8)


def _launch(a: torch.Tensor, k: int, relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    F = a.shape[-1]
    a2 = a.reshape(-1, F).contiguous()
    h = torch.empty_like(a2)
    bits = a.new_empty(opaque.mask_bits_shape(a.shape, a.dtype, relu), dtype=torch.uint8)  # rows as a2's
    if a2.shape[0] and takes_pairs(a2, relu):
        first, rest = pair_parts(F // 2)
        _relu_pair_kernel[(a2.shape[0],)](
            a2, h, bits, F // 2, k, BA=first, BB=rest, WITH_BITS=bits.numel() > 0,
            num_warps=_pair_warps(first + rest),
        )
    elif a2.shape[0]:
        block = triton.next_power_of_2(F)
        _topk_mask_kernel[(a2.shape[0],)](
            a2, h, F, k, BLOCK=block, KEY_BITS=_KEY_BITS[a.dtype], RELU=relu, num_warps=_num_warps(block)
        )
        if bits.numel():  # rows off a word boundary: the bits from the code
            bits = _pack_bits(h.view(a.shape))
    return h.view(a.shape), bits


_UNMASK_BLOCK = 1024  # bytes of bits a program: 4,096 words of the gradient


def _unmask(gh: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    gh = gh.contiguous()
    dh = torch.empty_like(gh)
    if bits.numel():
        _unmask_kernel[(triton.cdiv(bits.numel(), _UNMASK_BLOCK),)](gh, bits, dh, bits.numel(), BLOCK=_UNMASK_BLOCK,
                                                                     num_warps=4)
    return dh


def _check(a: torch.Tensor) -> None:
    if a.dtype not in _KEY_BITS:
        raise ValueError(f"topk_mask_triton takes {[str(d) for d in SUPPORTED_DTYPES]}, got {a.dtype}")


def topk_mask_bits(a: torch.Tensor, k: int, relu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``topk_mask_triton``'s code h, and its bits (..., F / 8) uint8 where ``opaque.mask_bits_shape``
    gives them: bit j of byte i set where h[..., 8 i + j] != 0, the units the gradient reaches; else an
    empty tensor."""
    _check(a)
    if torch.compiler.is_compiling():  # as a custom op (opaque.py): the launch reads the input's address
        return torch.ops.emaprobe.topk_mask(a, k, relu)
    return _launch(a, k, relu)


def topk_mask_triton(a: torch.Tensor, k: int, relu: bool = False) -> torch.Tensor:
    """a (..., F) on CUDA, bf16, fp16 or float32 -> h (..., F): the k largest of each row kept
    (ties at the k-th value: the lowest indices), zeros elsewhere; with ``relu``, of relu(a)."""
    return topk_mask_bits(a, k, relu)[0]


def unmask_triton(gh: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """gh (..., F), 2-byte floats, where ``bits`` (``topk_mask_bits``'s) is set, 0 elsewhere: the mask's
    backward, reading 1 bit a unit where ``gh.masked_fill(h == 0, 0)`` reads h's 16."""
    if gh.element_size() != 2 or gh.shape[-1] % 8 or bits.shape != (*gh.shape[:-1], gh.shape[-1] // 8):
        raise ValueError(f"unmask_triton: gh {tuple(gh.shape)} {gh.dtype} and bits {tuple(bits.shape)} do not match")
    if torch.compiler.is_compiling():
        return torch.ops.emaprobe.topk_unmask(gh, bits)
    return _unmask(gh, bits)


opaque.implement("topk_mask", _launch)
opaque.implement("topk_unmask", _unmask)
