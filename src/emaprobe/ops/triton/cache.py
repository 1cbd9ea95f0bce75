"""The scans' per-call host work, done once per key: launch plans and coefficient tensors.

Re-planning a launch (tile shape, segments, warm-ups), rebuilding the kernels' constant
arguments and slicing the coefficient tensors on every call is Python work of the order of
a short kernel's own time, so an eager call would be host-bound. ``ema.py`` and
``linear_scan.py`` build each once, for a key of the Python values it depends on (shapes,
alphas, device, whether an initial state is given, the ``TileConfig``), and keep it here; a
call then allocates its outputs and launches.

The scratch tensors a call's launches pass between them (segment end states, decay products,
warm-up marks: written by one launch, read by the next, never returned) are kept too, in the
plan, per (device, stream, thread): a call on one stream finishes with them before the next call
on that stream starts, so reuse needs no synchronization. Calls under CUDA graph capture make
their own (the graph's pool holds them for its replays), and so do calls that compiled code makes
through the custom ops (``opaque.py``, inside ``unkept()``): CUDA graph trees
(``torch.compile(mode="reduce-overhead")``) run a graph's first call eagerly, not capturing, with
every allocation of the thread routed to the graph's private pool, which may hold no tensor past the
call. For the same reason the EMA's coefficient tensors are made ahead, when the compiler traces the
op (``ahead``, from the op's fake implementation, ``opaque.implement``).

Under ``torch.compile`` the stores are bypassed: Dynamo traces the builder, as it traced the
per-call planning before, rather than a lookup in a module-level dict whose contents it would
have to guard on (a new entry would recompile every graph that read the dict).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import torch

# Per store; past it the oldest entry goes (a plan is rebuilt in microseconds). A CUDA graph captured
# from eager calls holds the addresses of the coefficient tensors it launched with: those stay alive
# while any plan of this many still refers to them, so capture with fewer distinct keys than this.
MAX_ENTRIES = 256

_STORES: dict[str, dict] = {}


def store(name: str) -> dict:
    """The named store (one per kind of plan), made on first use."""
    return _STORES.setdefault(name, {})


def cached(name: str, build: Callable[..., Any], *key: Hashable) -> Any:
    """``build(*key)``, made once per ``key`` in store ``name``; every call while compiling builds afresh."""
    if torch.compiler.is_compiling():
        return build(*key)
    return ahead(name, build, *key)


def ahead(name: str, build: Callable[..., Any], *key: Hashable) -> Any:
    """``cached``'s value, made and kept also while compiling: what compiled code will look up, made
    before it runs (an op's ``ahead`` in ``opaque.implement``)."""
    entries = _STORES.get(name)
    if entries is None:
        entries = store(name)
    try:
        return entries[key]
    except KeyError:
        pass
    value = build(*key)
    if len(entries) >= MAX_ENTRIES:
        del entries[next(iter(entries))]
    entries[key] = value
    return value


# per plan; past it the oldest (device, stream, thread) entry goes
MAX_SCRATCH = 8

_LOCAL = threading.local()


@contextlib.contextmanager
def unkept() -> Iterator[None]:
    """Within (this thread): ``scratch`` makes its tensors afresh and keeps none (see above)."""
    before = getattr(_LOCAL, "unkept", False)
    _LOCAL.unkept = True
    try:
        yield
    finally:
        _LOCAL.unkept = before


def scratch(owner: dict, make: Callable[[], Any], device: torch.device, tag: str = "") -> Any:
    """``make()``'s scratch tensors, made once per (``tag``, device, current stream, thread) in ``owner``
    (a plan's own dict), or afresh while compiling, capturing a CUDA graph or ``unkept`` (see above)."""
    if torch.compiler.is_compiling() or getattr(_LOCAL, "unkept", False):
        return make()
    idx = stream = None
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            return make()
        idx = device.index if device.index is not None else torch.cuda.current_device()
        stream = torch._C._cuda_getCurrentRawStream(idx)
    key = (tag, device.type, idx, stream, threading.get_ident())
    got = owner.get(key)
    if got is None:
        got = make()
        if len(owner) >= MAX_SCRATCH:
            del owner[next(iter(owner))]
        owner[key] = got
    return got


def clear() -> None:
    """Empty every store (tests; or after changing the plan's module-level defaults)."""
    for entries in _STORES.values():
        entries.clear()
