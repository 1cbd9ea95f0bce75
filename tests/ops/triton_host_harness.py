"""Runs the Triton scans' host code on CPU: a stand-in ``triton`` where none is installed, and a
recorder in place of each kernel that keeps every launch (grid, arguments, constants).

The kernels themselves never run here; what the host code hands them does, in a canonical form
(``canonical``) that two runs of the host code can be compared by: a tensor argument is the
buffer it points into (a named input or output, a small coefficient tensor by its values, or the
n-th scratch buffer), the element offset into it, and its dtype, which is all a Triton kernel
receives of it.
"""

from __future__ import annotations

import importlib
import sys
import types

import torch

TRITON_MODULES = ("emaprobe.ops.triton.common", "emaprobe.ops.triton.ema", "emaprobe.ops.triton.linear_scan")
KERNELS = {"ema": ("_ema_fwd_kernel", "_ema_bwd_kernel"), "lin": ("_lin_fwd_kernel", "_lin_bwd_kernel")}


class _JitStub:
    """What ``triton.jit`` returns in the stand-in: launching it is an error (the recorder replaces it)."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "kernel")

    def __getitem__(self, grid):
        raise RuntimeError(f"{self.__name__}: the stand-in Triton cannot run a kernel")


class _Anything:
    """Any ``tl`` attribute in the stand-in: a value, or called (``tl.constexpr(x)`` at module level), itself."""

    def __call__(self, *args, **kwargs):
        return self


def _any_attribute(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Anything()


def _stand_in() -> dict[str, types.ModuleType]:
    tri = types.ModuleType("triton")
    tri.__version__ = "0.0.0"  # not a release: torch's Triton checks read it, and find nothing to use
    tri.jit = lambda fn=None, **kw: _JitStub(fn) if fn is not None else _JitStub
    tri.cdiv = lambda a, b: -(-a // b)
    tl = types.ModuleType("triton.language")
    tl.__getattr__ = _any_attribute  # tl.constexpr and friends: annotations and module constants use them
    tri.language = tl
    return {"triton": tri, "triton.language": tl}


def load_triton_ops():
    """(ema, linear_scan, undo): the two op modules, with real Triton if it imports, else the stand-in;
    ``undo()`` removes the stand-in and the modules imported against it from ``sys.modules``."""
    try:
        import triton  # noqa: F401
        real = True
    except ImportError:
        real = False
    if real:
        ema = importlib.import_module("emaprobe.ops.triton.ema")
        return ema, importlib.import_module("emaprobe.ops.triton.linear_scan"), lambda: None
    saved = {k: sys.modules.pop(k) for k in TRITON_MODULES if k in sys.modules}
    fakes = _stand_in()
    sys.modules.update(fakes)
    ema = importlib.import_module("emaprobe.ops.triton.ema")
    lin = importlib.import_module("emaprobe.ops.triton.linear_scan")

    def undo():
        pkg = sys.modules.get("emaprobe.ops.triton")
        for k in (*fakes, *TRITON_MODULES):
            sys.modules.pop(k, None)
            if pkg is not None and k.startswith("emaprobe.ops.triton."):
                pkg.__dict__.pop(k.rsplit(".", 1)[1], None)
        sys.modules.update(saved)

    return ema, lin, undo


class Recorder:
    """Stands in for one kernel: ``kernel[grid](*args, **kwargs)`` appends (name, grid, args, kwargs)."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append((self.name, tuple(grid), args, kwargs))

        return launch


def record(monkeypatch_setattr, module, which: str, sms: int) -> list:
    """Swap ``module``'s kernels for recorders and its SM count for ``sms``; -> a fresh launch log.

    A cached plan holds the kernel it was built with, so a recorder already in place stays and only
    its log is replaced: launches from plans made earlier in the test land in the new log too."""
    log: list = []
    for name in KERNELS[which]:
        current = getattr(module, name)
        if isinstance(current, Recorder):
            current.log = log
        else:
            monkeypatch_setattr(module, name, Recorder(name, log))
    monkeypatch_setattr(module, "sm_count", lambda device: sms)
    return log


SENTINEL = -7  # what every buffer from torch.empty holds under ``filled_empty``: scratch compares equal


def filled_empty(monkeypatch_setattr) -> None:
    """torch.empty / empty_like hand out buffers filled with SENTINEL, so that ``canonical`` is
    deterministic where it reads a small buffer's values."""
    empty, empty_like = torch.empty, torch.empty_like
    monkeypatch_setattr(torch, "empty", lambda *a, **k: empty(*a, **k).fill_(SENTINEL))
    monkeypatch_setattr(torch, "empty_like", lambda *a, **k: empty_like(*a, **k).fill_(SENTINEL))


def canonical(log: list, named: dict[str, torch.Tensor]) -> list:
    """The launches with each tensor argument as (buffer, element offset, dtype); see the module doc."""
    owners = {}
    for name, t in named.items():
        if t is not None:
            owners.setdefault(t.untyped_storage().data_ptr(), (name, t))
    scratch: dict[int, str] = {}

    def arg(v):
        if not isinstance(v, torch.Tensor):
            return v
        ptr = v.untyped_storage().data_ptr()
        if ptr in owners:
            name, base = owners[ptr]
            return (name, (v.data_ptr() - base.data_ptr()) // v.element_size(), str(v.dtype))
        if v.untyped_storage().nbytes() <= 8 * 8:  # a coefficient tensor (or a tiny buffer): by its values
            whole = torch.empty(0, dtype=v.dtype).set_(v.untyped_storage())
            return ("coefs", tuple(whole.tolist()), v.storage_offset(), str(v.dtype))
        scratch.setdefault(ptr, f"scratch{len(scratch)}")
        return (scratch[ptr], v.storage_offset(), str(v.dtype))

    return [(name, grid, tuple(arg(a) for a in args), tuple(sorted((k, arg(v)) for k, v in kwargs.items())))
            for name, grid, args, kwargs in log]
