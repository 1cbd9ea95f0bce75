"""What the Triton scan kernels share: the scan's pair operator, the gates' sigmoids, tile and mask
helpers, the SM count, and ``launch``, which starts a cached plan's kernels with little host time.

Symbols: CT time steps in one register tile, BD channels in one tile, T time, D channels,
SEGLEN the length of a time segment.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

from emaprobe.ops.triton.plan import WARM_BITS, warm_bits


@triton.jit
def combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
    return a1 * a2, a2 * b1 + b2


def interpreted() -> bool:
    """Whether Triton's interpreter runs the kernels (TRITON_INTERPRET=1): no inline PTX, no compiled launcher."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Gates as one MUFU instruction each where they run on the GPU: ``tl.exp`` and ``/`` compile to ex2 and
# a division that guard denormals and ranges (about 11 SASS instructions a sigmoid); the selective
# scan's gates take ``ex2.approx.ftz`` and ``rcp.approx.ftz`` (each within 2 ulp of float32, denormals
# flushed). Triton's interpreter has no inline PTX, so there the same functions are ``tl.exp2`` and
# ``1 / x``. With them (and ``linear_scan._lin_bwd_tile``'s one set of gates a row, and tile depths that
# do not spill) a thread's sm_90 instructions an element in the gated tile loops fell from 55 to 29
# forward and from 94 to 55 backward (notes/kernels.md, row "gated gates, fewer instructions").
if interpreted():
    @triton.jit
    def fast_exp2(x):
        return tl.exp2(x)

    @triton.jit
    def fast_rcp(x):
        return 1.0 / x
else:
    @triton.jit
    def fast_exp2(x):
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)

    @triton.jit
    def fast_rcp(x):
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)


NEG_LOG2E = tl.constexpr(-1.4426950408889634)  # -log2(e): e^-z = 2^(z * NEG_LOG2E)


@triton.jit
def sigmoid2(w):
    # sigmoid(z) given w = z * NEG_LOG2E (a bias folds into the same FFMA): 1 / (1 + 2^w), one ex2 and
    # one rcp; 0 and 1 at the ends, no NaN (rcp(inf) = 0)
    return fast_rcp(1.0 + fast_exp2(w))


@triton.jit
def sigmoid2_pair(w):
    # (sigmoid(z), sigmoid(-z)) given w = z * NEG_LOG2E, each to float32's relative precision (no 1 - a),
    # from one ex2 and one rcp: with e = e^-|z| in (0, 1], 1 / (1 + e) is the larger and e / (1 + e) the
    # smaller of the two
    e = fast_exp2(-tl.abs(w))
    r = fast_rcp(1.0 + e)
    q = e * r
    pos = w <= 0
    return tl.where(pos, r, q), tl.where(pos, q, r)


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


def out_warm_bits(dtype: torch.dtype) -> int:
    """The bits a segment's warm-up keeps where the kernel writes ``dtype``: ``plan.warm_bits`` of its
    significand (bf16 16, float16 19), WARM_BITS (float32's 24) for float32, float64 and the rest."""
    return _OUT_WARM_BITS.get(dtype, WARM_BITS)


_OUT_WARM_BITS = {torch.bfloat16: warm_bits(8), torch.float16: warm_bits(11)}  # their significands' bits


# ---------------------------------------------------------------------------- launches
#
# ``fn[grid](*args, **constants)`` goes through Triton's ``JITFunction.run``: it binds and specializes
# every argument, looks the compiled kernel up, builds launch metadata and launches: 32 us of host time
# a launch on an H200's host, against 8 us for the compiled kernel's own launcher given the same
# arguments (notes/kernels.md, "direct launches, second try"). A cached plan fixes a launch's grid,
# constants and scalar arguments, so ``launch`` keeps, per ``Launch`` of a plan, the compiled kernel
# that Triton's own first call returned, keyed on what Triton specializes on that the plan does not
# fix (each tensor's dtype and 16-byte alignment, the per-call ints, the current device), and later
# calls with that key go to the kernel's C launcher with the tensors' addresses. The launcher's
# calling convention is Triton's own internal one, read from Triton 3.6 (``JITFunction.run``,
# ``CudaLauncher``); other versions, launch
# hooks (profilers such as Proton), tracing under ``torch.compile``, a kernel that needs scratch memory
# and ``EMAPROBE_TRITON_DIRECT=0`` take the ordinary path.


def _direct_supported() -> bool:
    wanted = os.environ.get("EMAPROBE_TRITON_DIRECT", "1") != "0"
    version = getattr(triton, "__version__", "")
    return version.split(".")[:2] == ["3", "6"] and wanted and not interpreted()


DIRECT = _direct_supported()


def _hooked() -> bool:
    # Triton 3.6 keeps its launch hooks in HookChains, never None: a hook is set when a chain has calls
    rt = triton.knobs.runtime
    for hook in (rt.launch_enter_hook, rt.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return True
    return False


class Launch(NamedTuple):
    """One kernel launch of a cached plan: ``fn[grid](*tensors, *fixed, *ints, **consts)``, where
    the call gives ``tensors`` (and ``ints``, such as strides) and the plan fixes the rest.
    ``kernels`` is ``launch``'s store of compiled kernels for it (see above)."""

    fn: Any  # a triton.JITFunction
    grid: tuple[int, int, int]
    consts: dict  # constexpr arguments and launch options (num_warps, ...)
    fixed: tuple  # the arguments after the tensors that the plan fixes: its coefficient tensors and ints
    kernels: dict


def make_launch(fn, grid: tuple[int, int, int], consts: dict, fixed: tuple = ()) -> Launch:
    return Launch(fn, tuple(grid), consts, tuple(fixed), {})


_MISSING = object()


def launch(site: Launch, tensors: tuple, ints: tuple = ()) -> None:
    """``site.fn[site.grid](*tensors, *site.fixed, *ints, **site.consts)``; with ``DIRECT``, a repeat with
    the same specialization goes straight to the kernel's launcher (the comment above)."""
    if DIRECT and not torch.compiler.is_compiling() and not _hooked():
        dev = torch._C._cuda_getDevice()
        ptrs = [t.data_ptr() for t in tensors]
        key = (dev, *[t.dtype for t in tensors], *[p & 15 == 0 for p in ptrs], *ints)
        hit = site.kernels.get(key, _MISSING)
        if hit is _MISSING:
            kernel = site.fn[site.grid](*tensors, *site.fixed, *ints, **site.consts)
            site.kernels[key] = _direct(site, kernel, len(tensors) + len(ints))
            return
        if hit is not None:
            c_launch, function, meta, coop, pdl, fixed, tail = hit
            g0, g1, g2 = site.grid
            c_launch(g0, g1, g2, torch._C._cuda_getCurrentRawStream(dev), function, coop, pdl, None, None, meta,
                     None, None, None, *ptrs, *fixed, *ints, *tail)
            return
    site.fn[site.grid](*tensors, *site.fixed, *ints, **site.consts)


def _direct(site: Launch, kernel, n_call: int) -> tuple | None:
    """What ``launch`` needs to start ``kernel`` (the compiled kernel Triton's call returned) itself, or
    None where it cannot: not Triton 3.6's compiled kernel, scratch memory, constexprs among the
    positional arguments."""
    run = getattr(kernel, "run", None)
    c_launch = getattr(run, "launch", None)
    function = getattr(kernel, "function", None)
    meta = getattr(kernel, "packed_metadata", None)
    if c_launch is None or function is None or meta is None:
        return None
    if getattr(run, "global_scratch_size", 1) or getattr(run, "profile_scratch_size", 1):
        return None
    params = site.fn.params
    n = n_call + len(site.fixed)
    if len(params) < n or any(p.is_constexpr for p in params[:n]):
        return None
    tail = []
    for p in params[n:]:
        if not p.is_constexpr:
            return None
        tail.append(site.consts[p.name] if p.name in site.consts else p.default)
    fixed = tuple(v.data_ptr() if isinstance(v, torch.Tensor) else v for v in site.fixed)
    return (c_launch, function, meta, bool(run.launch_cooperative_grid), bool(run.launch_pdl), fixed, tuple(tail))
