"""What the Triton scan kernels share: the scan's pair operator, tile and mask helpers, the SM count.

Symbols: CT time steps in one register tile, BD channels in one tile, T time, D channels,
SEGLEN the length of a time segment.
"""

from __future__ import annotations

import inspect
import os

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


# ---------------------------------------------------------------------------- launches
#
# ``fn[grid](*args, **constants)`` goes through Triton's ``JITFunction.run``: it binds and specializes
# every argument, looks the compiled kernel up and launches it, about 20-25 us of host time a launch
# on the H200's host (issue 17; `host_us_ema_fwd_launcher` in results/bench/scan_cuda_*.json). A
# cached plan fixes the constants, the grid and most scalars, so ``launch`` keeps the compiled kernel
# that the first such call returns in the plan, keyed on the launch and on what Triton specializes on
# (each tensor's dtype and 16-byte alignment, each int, the device), and later calls with the same key
# go to its launcher directly. The launcher's calling convention is Triton's own internal one, read
# from Triton 3.6's ``JITFunction.run``; other versions, launch hooks (profilers), tracing under
# ``torch.compile`` and ``EMAPROBE_TRITON_DIRECT`` unset take the ordinary path. Off by default until
# it is timed and tested on a GPU (notes/kernels.md).


def _direct_wanted() -> bool:
    version = tuple(getattr(triton, "__version__", "0.0").split(".")[:2])
    return version == ("3", "6") and os.environ.get("EMAPROBE_TRITON_DIRECT", "0") == "1"


DIRECT = _direct_wanted()


def _spec(v):
    # finer than or equal to Triton's own specialization of an argument
    if isinstance(v, torch.Tensor):
        return v.dtype, v.data_ptr() % 16 == 0
    if v is None or isinstance(v, (bool, int)):
        return v
    return type(v)


def _hooked() -> bool:
    rt = getattr(getattr(triton, "knobs", None), "runtime", None)
    return rt is None or rt.launch_enter_hook is not None or rt.launch_exit_hook is not None


def _tail(fn, n_args: int, consts: dict) -> tuple:
    # the parameters after the positional ones, in signature order: what the launcher takes after them
    params = inspect.signature(fn.fn).parameters
    return tuple(consts[name] if name in consts else params[name].default for name in list(params)[n_args:])


def _stream(device_index: int) -> int:
    return torch._C._cuda_getCurrentRawStream(device_index)  # the call Triton itself makes for the stream


def launch(fn, grid: tuple[int, int, int], compiled: dict, consts: dict, *args) -> None:
    """``fn[grid](*args, **consts)``. With ``DIRECT``, the compiled kernel that call returns is kept
    in ``compiled`` (a cached plan's store; ``consts`` one of that plan's constant dicts, which
    live as long as it), and a repeat with the same specialization goes straight to its launcher."""
    if not DIRECT or torch.compiler.is_compiling() or _hooked():
        fn[grid](*args, **consts)
        return
    key = (fn, id(consts), args[0].get_device(), *map(_spec, args))
    hit = compiled.get(key)
    if hit is None:
        kernel = fn[grid](*args, **consts)
        if hasattr(kernel, "packed_metadata") and hasattr(kernel, "function"):  # a compiled kernel, ready
            compiled[key] = (kernel, _tail(fn, len(args), consts))
        return
    kernel, tail = hit
    kernel.run(grid[0], grid[1], grid[2], _stream(key[2]), kernel.function, kernel.packed_metadata, None, None, None,
               *args, *tail)
