"""What the Triton scan kernels share: the scan's pair operator, tile and mask helpers, the SM count.

Symbols: CT time steps in one register tile, BD channels in one tile, T time, D channels,
SEGLEN the length of a time segment.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def last_row(v, rows, n_last):
    # row ``n_last`` of a (CT, BD) tile, summed out of axis 0: Triton cannot index rows
    return tl.sum(tl.where((rows == n_last)[:, None], v, 0.0), axis=0)


@triton.jit
def channel_mask(offs, D, BD: tl.constexpr, EVEN: tl.constexpr):
    # offs < D; when D is a multiple of BD, a constant the compiler drops from every load and store
    if EVEN:
        return tl.full((BD,), 1, tl.int1)
    else:
        return offs < D


@triton.jit
def segment_length(seg, SEGLEN, T):
    # length of segment ``seg``: SEGLEN, or what is left of T for the last one
    n = SEGLEN
    if seg * SEGLEN + SEGLEN > T:
        n = T - seg * SEGLEN
    return n


@triton.jit
def tile_plan(seg_len, CT: tl.constexpr, first_masked, last_masked):
    # Full tiles run unmasked; at most two run masked: the first (when ``first_masked``) and the
    # last (when ``last_masked`` or partial). -> (lo, hi) of the unmasked loop, the last tile's start,
    # and whether it still needs its masked pass
    last = (seg_len - 1) // CT * CT
    lo = tl.where(first_masked, CT, 0)
    tail = last_masked | (seg_len % CT != 0)
    hi = tl.where(tail, last, seg_len)
    return lo, hi, last, tail & (last >= lo)


_SM_COUNT: dict[int, int] = {}


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of CUDA ``device``: the plans size their launches by it.

    Only CUDA devices have one; the planner itself (``plan.py``) takes the count as an argument.
    """
    if device.type != "cuda":
        raise ValueError(f"the Triton scans plan launches for a CUDA device's SM count; got a {device.type} tensor")
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]
