"""Public scan ops: ``linear_scan`` and ``ema_traces``, with autograd and backends.

Symbols as in ``naive.py``. The backward pass of ``h_t = a_t h_{t-1} + b_t`` is
the same recurrence run backwards in time:

    g_t = dL/dh_t (total) = dy_t + a_{t+1} g_{t+1}
    dL/db_t = g_t,   dL/da_t = g_t * h_{t-1},   dL/dh0 = a_1 g_1

so the torch backend needs only a forward scan. Backends are picked in one place,
``resolve_backend``: ``"auto"`` takes a registered GPU kernel when the tensor is on
CUDA and the kernel imports, and the torch path otherwise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from emaprobe.ops.chunk import chunk_ema_traces, chunk_linear_scan
from emaprobe.ops.naive import accum_dtype, gate_inputs, naive_ema_traces, naive_gated_scan, naive_linear_scan
from emaprobe.ops.triton.cache import cached

DEFAULT_ALPHAS = (0.5, 0.1, 0.02)


def _make_alpha_tensor(vals: tuple[float, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(vals, dtype=torch.float64, device=device)


def _alpha_tensor(vals: tuple[float, ...], device: torch.device) -> torch.Tensor:
    # one host-to-device copy per (alphas, device), not one per call: on CUDA the copy
    # costs launch time and cannot be captured in a graph. A store that torch.compile
    # bypasses (ops/triton/cache.py), where an lru_cache made Dynamo warn
    return cached("alpha_tensor", _make_alpha_tensor, vals, device)


@dataclass(frozen=True)
class ScanBackend:
    """A scan implementation: two differentiable ops with one contract, and optionally a third.

    linear_scan(a, b, h0, out_dtype, state) -> (h (B, T, *F) in out_dtype, h_T (B, *F) or None)
    ema_traces(x, alphas, h0, state) -> (h (B, T, S, D) in x.dtype, h_T (B, S, D) or None)
    gated_scan(logits, x, decay_bias, gate_bias, h0, state) -> (h (B, T, S, D) in x.dtype, h_T or None),
        optional: a form that computes ``gate_inputs`` inside the kernel; without one, ``gated_scan``
        computes them apart and runs the backend's ``linear_scan``.

    ``alphas`` is a tuple of S floats; ``h0`` is None or the initial state. The state is
    accumulated, and h_T returned, in float32 (float64 for float64 inputs). ``state`` False:
    the caller will not use h_T, and the backend may return None for it (the Triton kernels
    then neither allocate nor store it: one allocation less a call, a few microseconds of host
    time). Gradients flow to a, b, x and h0, and through h_T. Inputs arrive validated, with
    T >= 1 (the public functions below check shapes and handle T = 0). ``needs_cuda``
    backends run only on CUDA tensors.
    """

    name: str
    linear_scan: Callable
    ema_traces: Callable
    needs_cuda: bool = False
    gated_scan: Callable | None = None


def _torch_linear_scan(a, b, h0, out_dtype, state=True):
    h = _LinearScanFn.apply(a, b, h0)  # accumulation dtype
    return h.to(out_dtype), h[:, -1]


def _torch_ema_traces(x, alphas, h0, state=True):
    h = _EmaTracesFn.apply(x, _alpha_tensor(alphas, x.device), h0)
    return h.to(x.dtype), h[:, -1]


def _triton_backend() -> ScanBackend:
    # imported on first use: it needs Triton, and compiles for CUDA only
    from emaprobe.ops.triton.ema import fused_ema_traces
    from emaprobe.ops.triton.linear_scan import fused_gated_scan, fused_linear_scan

    return ScanBackend("triton", linear_scan=fused_linear_scan, ema_traces=fused_ema_traces, needs_cuda=True,
                       gated_scan=fused_gated_scan)


BACKENDS: dict[str, ScanBackend] = {
    "torch": ScanBackend("torch", linear_scan=_torch_linear_scan, ema_traces=_torch_ema_traces),
}
# name -> a function that builds the backend; called once, the first time the name is asked for
_LAZY_BACKENDS: dict[str, Callable[[], ScanBackend]] = {"triton": _triton_backend}
# lazy backends whose build failed (no Triton, say): still valid names, never tried again
_UNAVAILABLE: set[str] = set()
_warned: set[str] = set()


def register_backend(backend: ScanBackend) -> None:
    BACKENDS[backend.name] = backend


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _load(name: str) -> ScanBackend | None:
    if name in BACKENDS:
        return BACKENDS[name]
    build = _LAZY_BACKENDS.get(name)
    if build is None or name in _UNAVAILABLE:
        return None
    try:
        backend = build()
    except Exception as err:  # noqa: BLE001 - any import failure means "not available"
        _warn_once(f"import-{name}", f"scan backend {name!r} is unavailable ({err}); using 'torch'")
        _UNAVAILABLE.add(name)  # the name stays known: asking again falls back the same way
        return None
    _LAZY_BACKENDS.pop(name)
    register_backend(backend)
    return backend


def available_backends() -> list[str]:
    return sorted(set(BACKENDS) | set(_LAZY_BACKENDS) | {"auto", "naive"})


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """Name of the backend that will run: 'naive', 'torch' or a registered kernel.

    ``"auto"`` takes a kernel for CUDA tensors of ``dtype`` other than float64: the kernels
    accumulate in float32, and float64 inputs are promised a float64 state (``ScanBackend``)."""
    if backend == "naive":
        return "naive"
    if backend == "auto":
        if device.type == "cuda" and dtype != torch.float64:
            for name in list(_LAZY_BACKENDS):
                if _load(name) is not None:
                    return name
            for name, be in BACKENDS.items():
                if be.needs_cuda:
                    return name
        return "torch"
    if backend not in BACKENDS and backend not in _LAZY_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {available_backends()}")
    be = _load(backend)
    if be is None:
        return "torch"
    if be.needs_cuda and device.type != "cuda":
        _warn_once(f"cpu-{backend}", f"scan backend {backend!r} needs a CUDA tensor; falling back to 'torch'")
        return "torch"
    return backend


# ---------------------------------------------------------------------------- validation


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def _check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    try:
        vals = tuple(float(a) for a in alphas)
    except (TypeError, ValueError) as err:
        raise ValueError(f"alphas must be a sequence of floats, got {alphas!r}") from err
    if len(vals) == 0:
        raise ValueError("alphas must hold at least one coefficient")
    for a in vals:
        if not (0.0 < a <= 1.0) or math.isnan(a):
            raise ValueError(f"alphas must lie in (0, 1]; got {a} in {vals}")
    return vals


def _check_devices(**tensors: torch.Tensor | None) -> None:
    # one device for all: a kernel handed a tensor of another device reads memory that is not there.
    # The loop is the whole cost of a good call (0.4 us on a 2-core CPU; public calls count their host time)
    first = next(iter(tensors.values())).device
    for t in tensors.values():
        if t is not None and t.device != first:
            where = ", ".join(f"{name} on {u.device}" for name, u in tensors.items() if u is not None)
            raise ValueError(f"the tensors must be on one device; got {where}")


def _empty_state(h0: torch.Tensor | None, shape: tuple[int, ...], device: torch.device,
                 *inputs: torch.Tensor) -> torch.Tensor:
    # the state after T = 0 steps: h0 (zeros without one), in the dtype a longer call's state has
    acc = accum_dtype(*inputs) if h0 is None else accum_dtype(*inputs, h0)
    return torch.zeros(shape, dtype=acc, device=device) if h0 is None else h0.to(acc, copy=True)


def _check_h0(h0: torch.Tensor | None, want: tuple[int, ...], what: str, name: str = "h0") -> None:
    # exactly ``want``: a state of another shape would broadcast silently (a batch-1 state into a batch-3 step)
    if h0 is None:
        return
    _check_float(name, h0)
    if tuple(h0.shape) != want:
        raise ValueError(f"{name} must have shape {want} ({what}), got {tuple(h0.shape)}")


# ---------------------------------------------------------------------------- autograd


def _reverse_scan(scan: Callable, a: torch.Tensor, g_out: torch.Tensor) -> torch.Tensor:
    """g_t = g_out_t + a_{t+1} g_{t+1}; a broadcastable to g_out (B, T, *F)."""
    if a.shape[1] != 1:
        a_next = torch.cat([a[:, 1:], torch.ones_like(a[:, :1])], dim=1)
        a_next = a_next.flip(1)
    else:
        a_next = a
    return scan(a_next, g_out.flip(1), None).flip(1)


class _LinearScanFn(torch.autograd.Function):
    """The torch backend's ``linear_scan``: chunked forward, and the backward as a reverse scan."""

    @staticmethod
    def forward(ctx, a, b, h0):
        h = chunk_linear_scan(a, b, h0)
        ctx.save_for_backward(a, b, h0, h)
        return h

    @staticmethod
    def backward(ctx, gh):
        a, b, h0, h = ctx.saved_tensors
        gh = gh.to(h.dtype)
        af = a.to(h.dtype)
        while af.dim() < h.dim():
            af = af.unsqueeze(0)
        g = _reverse_scan(chunk_linear_scan, af, gh)  # (B, T, *F), accumulation dtype
        ga = gb = gh0 = None
        if ctx.needs_input_grad[0]:
            first = torch.zeros_like(h[:, :1]) if h0 is None else h0.to(h.dtype).unsqueeze(1).expand_as(h[:, :1])
            hprev = torch.cat([first, h[:, :-1]], dim=1)
            ga = (g * hprev).sum_to_size(a.shape).to(a.dtype)
        if ctx.needs_input_grad[1]:
            gb = g.sum_to_size(b.shape).to(b.dtype)
        if h0 is not None and ctx.needs_input_grad[2]:
            gh0 = (af[:, 0] * g[:, 0]).sum_to_size(h0.shape).to(h0.dtype)
        return ga, gb, gh0


class _EmaTracesFn(torch.autograd.Function):
    """The torch backend's ``ema_traces``: chunked forward, the backward as one reverse scan."""

    @staticmethod
    def forward(ctx, x, alphas, h0):
        h = chunk_ema_traces(x, alphas, h0)
        ctx.save_for_backward(alphas, h0)
        ctx.x_dtype = x.dtype
        return h

    @staticmethod
    def backward(ctx, gh):
        alphas, h0 = ctx.saved_tensors
        S = alphas.numel()
        acc = torch.promote_types(gh.dtype, torch.float32)
        gh = gh.to(acc)
        decay = (1.0 - alphas.to(acc)).view(1, 1, S, 1)
        g = _reverse_scan(chunk_linear_scan, decay, gh)  # (B, T, S, D)
        gx = gh0 = None
        if ctx.needs_input_grad[0]:
            gx = torch.einsum("btsd,s->btd", g, alphas.to(acc)).to(ctx.x_dtype)
        if h0 is not None and ctx.needs_input_grad[2]:
            gh0 = (decay[:, 0] * g[:, 0]).to(h0.dtype)
        return gx, None, gh0


# ---------------------------------------------------------------------------- public API


def linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    return_state: bool = False,
    backend: str = "auto",
):
    """The diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t`` over dim 1.

    Args:
        a: decays, broadcastable with ``b`` to (B, T, *F). Fixed (shape (1, 1, *F)),
            learned per channel, or input-dependent (B, T, *F): one op serves all.
        b: inputs, broadcastable to (B, T, *F).
        h0: initial state (B, *F); zeros when None.
        return_state: also return the final state h_T (B, *F), float32.
        backend: "auto", "torch", "naive" or a registered kernel such as "triton".

    Returns:
        h (B, T, *F) in the promoted dtype of a and b (accumulated in float32);
        with ``return_state``, the tuple (h, h_T).
    """
    _check_float("a", a)
    _check_float("b", b)
    try:
        # torch.broadcast_shapes is Python, about 10 us a call: worked out once per pair of shapes
        shape = cached("broadcast_shapes", torch.broadcast_shapes, a.shape, b.shape)
    except RuntimeError as err:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} do not broadcast to one shape") from err
    if len(shape) < 2:
        raise ValueError(f"a and b must broadcast to (B, T, ...), got shape {tuple(shape)}")
    if a.dim() > len(shape) or b.dim() != len(shape):
        raise ValueError(f"b must carry the full rank (B, T, ...); got a {tuple(a.shape)}, b {tuple(b.shape)}")
    _check_h0(h0, (shape[0],) + tuple(shape[2:]), "(B, *F): the broadcast shape without T")
    _check_devices(a=a, b=b, h0=h0)
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    name = resolve_backend(backend, b.device, out_dtype)
    if shape[1] == 0:
        h = torch.empty(shape, dtype=out_dtype, device=b.device)
        return (h, _empty_state(h0, (shape[0],) + tuple(shape[2:]), b.device, a, b)) if return_state else h
    if name == "naive":
        return naive_linear_scan(a, b, h0, return_state)
    out, state = BACKENDS[name].linear_scan(a, b, h0, out_dtype, return_state)
    return (out, state) if return_state else out


def gated_scan(
    logits: torch.Tensor,
    x: torch.Tensor,
    decay_bias: torch.Tensor,
    gate_bias: torch.Tensor,
    h0: torch.Tensor | None = None,
    return_state: bool = False,
    backend: str = "auto",
):
    """The selective mixer's recurrence, its gates included (``layers/selective.py``):

        a_t = sigmoid(logits[:, t, 0] + decay_bias)              decay
        i_t = sigmoid(logits[:, t, 1] + gate_bias)               input gate
        h_t = a_t * h_{t-1} + (1 - a_t) * i_t * x_t              per timescale

    ``linear_scan`` of ``gate_inputs``, but a backend with a fused form (the Triton kernels) computes the
    gates in float32 inside its tiles: it reads the logits and x and writes h once, where the composed
    form writes and reads float32 decays and inputs (B, T, S, D), and its backward writes the logits'
    gradients directly. In both, the decays are float32 (in bf16 a decay of 0.98 is off by up to 20%
    in its timescale) and h is returned in x's dtype; the fused backward reads h_{t-1} from that h.

    Args:
        logits: (B, T, 2, S, D): decay logits at [:, :, 0], input-gate logits at [:, :, 1].
        x: (B, T, D) input, shared by the S timescales.
        decay_bias, gate_bias: (S, D).
        h0: initial state (B, S, D); zeros when None.
        return_state: also return the final state h_T (B, S, D), float32.
        backend: "auto", "torch", "naive" or a registered kernel such as "triton".

    Returns:
        h (B, T, S, D) in x's dtype; with ``return_state``, the tuple (h, h_T).
    """
    for name, t in (("logits", logits), ("x", x), ("decay_bias", decay_bias), ("gate_bias", gate_bias)):
        _check_float(name, t)
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, T, D), got {tuple(x.shape)}")
    B, T, D = x.shape
    if logits.dim() != 5 or tuple(logits.shape[:3]) != (B, T, 2) or logits.shape[4] != D:
        raise ValueError(f"logits must have shape (B, T, 2, S, D) = ({B}, {T}, 2, S, {D}) for x {tuple(x.shape)}, "
                         f"got {tuple(logits.shape)}")
    S = logits.shape[3]
    for name, t in (("decay_bias", decay_bias), ("gate_bias", gate_bias)):
        if tuple(t.shape) != (S, D):
            raise ValueError(f"{name} must have shape (S, D) = ({S}, {D}), got {tuple(t.shape)}")
    _check_h0(h0, (B, S, D), "(B, S, D)")
    _check_devices(logits=logits, x=x, decay_bias=decay_bias, gate_bias=gate_bias, h0=h0)
    name = resolve_backend(backend, x.device, torch.promote_types(logits.dtype, x.dtype))
    if T == 0:
        h = torch.empty(B, 0, S, D, dtype=x.dtype, device=x.device)
        return (h, _empty_state(h0, (B, S, D), x.device, logits, x, decay_bias, gate_bias)) if return_state else h
    if name == "naive":
        return naive_gated_scan(logits, x, decay_bias, gate_bias, h0, return_state)
    be = BACKENDS[name]
    if be.gated_scan is not None:
        out, state = be.gated_scan(logits, x, decay_bias, gate_bias, h0, return_state)
    else:
        a, b = gate_inputs(logits, x, decay_bias, gate_bias)
        out, state = be.linear_scan(a, b, h0, x.dtype, return_state)
    return (out, state) if return_state else out


def ema_traces(
    x: torch.Tensor,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    h0: torch.Tensor | None = None,
    return_state: bool = False,
    backend: str = "auto",
):
    """Multi-timescale EMA traces ``h_t^(s) = (1 - alpha_s) h_{t-1}^(s) + alpha_s x_t``.

    Args:
        x: (B, T, D) floating input.
        alphas: S coefficients in (0, 1]; the paper's default (0.5, 0.1, 0.02).
        h0: initial traces (B, S, D); zeros when None.
        return_state: also return the final traces (B, S, D), float32.
        backend: "auto", "torch", "naive" or a registered kernel such as "triton".

    Returns:
        traces (B, T, S, D) in x's dtype (the state is kept in float32); with
        ``return_state``, the tuple (traces, final_state).
    """
    _check_float("x", x)
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, T, D), got {tuple(x.shape)}")
    vals = _check_alphas(alphas)
    B, T, D = x.shape
    S = len(vals)
    _check_h0(h0, (B, S, D), "(B, S, D)")
    _check_devices(x=x, h0=h0)
    name = resolve_backend(backend, x.device, x.dtype)
    if T == 0:
        h = torch.empty(B, 0, S, D, dtype=x.dtype, device=x.device)
        return (h, _empty_state(h0, (B, S, D), x.device, x)) if return_state else h
    if name == "naive":
        return naive_ema_traces(x, vals, h0, return_state)
    out, state = BACKENDS[name].ema_traces(x, vals, h0, return_state)
    return (out, state) if return_state else out
