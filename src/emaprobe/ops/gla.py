"""Gated linear attention (GLA): a matrix state with an input-dependent, per-key-channel decay.

Per head, with the state S a d_k x d_v matrix (Yang et al. 2023, "Gated Linear Attention
Transformers with Hardware-Efficient Training", arXiv 2312.06635):

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,      o_t = q_t S_t,      S_0 = h0 (zeros by default)

Symbols (shapes of every function here):

    B  batch        T  time         H  heads
    K  d_k, key width per head      V  d_v, value width per head
    q, k   (B, T, H, K)   queries and keys
    v      (B, T, H, V)   values
    g      (B, T, H, K)   log decays, g <= 0 (the decay exp(g_t) lies in (0, 1])
    S, h0  (B, H, K, V)   state
    o      (B, T, H, V)   outputs

``naive_gla`` is the specification: one Python step per token, any float dtype
(float64 included). ``chunk_gla`` computes the same in chunks of C tokens with
matrix products, and ``gla_step`` is the one-token form for generation. The public
``gated_linear_attention`` picks a backend in one place, as ``linear_scan`` does.

How ``chunk_gla`` stays stable. Within a chunk, with b_i = g_1 + ... + g_i the log
decay accumulated since the chunk start (b is non-increasing),

    o_i = (q_i * exp(b_i)) S_0  +  sum_{j <= i} [sum_c q_ic k_jc exp(b_ic - b_jc)] v_j.

GLA's parallel form writes the bracket as (q_i exp(b_i)) . (k_j exp(-b_j)), one
matrix product, but exp(-b_j) overflows float32 once the decay accumulated in a chunk
passes e^-88, which a selective gate reaches easily. Here every exponent is <= 0:

- the state terms use exp(b_i) and exp(b_C - b_j) (b_C: the chunk's last position);
- a chunk is cut into sub-chunks of c tokens. For query i in sub-chunk I and key j in
  an earlier sub-chunk, exp(b_i - b_j) = exp(b_i - r_I) exp(r_I - b_j), where r_I is b
  just before sub-chunk I, so b_i <= r_I <= b_j: both factors lie in (0, 1], and each
  is at least their product, so nothing underflows that the exact value would not.
  This is one matrix product per sub-chunk (the paper's secondary-level chunking;
  flash-linear-attention's chunk kernels split the same way);
- pairs inside one sub-chunk take exp(b_i - b_j), j <= i, elementwise: a
  (c, c, K) tensor per sub-chunk, the only place memory grows by c over q;
- log decays are summed within each sub-chunk, and the sub-chunk totals within the
  chunk, so the exponent of the nearest (largest) pairs is a short sum, never the
  difference of two long ones, which would lose eps |b| (float32, after a strong gate).

g <= 0 is not checked (that would cost a device sync): a positive g grows the state
and voids the argument above.

Non-finite input stays causal in the forward, as in the token loop: a chunk's products
mix its positions (0 * NaN is NaN), so ``chunk_gla`` computes on the inputs made finite
and marks NaN where the loop's outputs and state are non-finite (``_nonfinite``); a log
decay of -inf is a decay of 0, a reset. Its backward is autograd's through the same
products, so a non-finite upstream gradient may reach later positions' input gradients.

The chunk states are carried across the T / C chunks by one ``linear_scan`` call (the
chunk-level recurrence S_m = diag(decay_m) S_(m-1) + U_m is diagonal in K and broadcast over
V). Everything is computed
in float32 (float64 for float64 inputs); outputs come back in the inputs' dtype and
the state stays in the accumulation dtype. Under autocast the matrix products take
autocast's dtype (bf16 operands, float32 accumulation, as flash-linear-attention's
chunk kernels do), while the exponentials and the carried state stay float32: about
3e-3 relative error against 1e-7 without it (``tests/ops/test_gla.py``). Autograd runs
through the PyTorch ops.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from emaprobe.ops.naive import accum_dtype
from emaprobe.ops.scan import _check_devices, linear_scan

# ---------------------------------------------------------------------------- validation


def _check_tensor(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def _check_gla(q, k, v, g, h0) -> tuple[int, int, int, int, int]:
    """(B, T, H, K, V) after checking every shape; a clear ValueError otherwise."""
    for name, t in (("q", q), ("k", k), ("v", v), ("log_decay", g)):
        _check_tensor(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, T, H, {'V' if name == 'v' else 'K'}), got {tuple(t.shape)}")
    B, T, H, K = q.shape
    if tuple(k.shape) != (B, T, H, K):
        raise ValueError(f"k must have q's shape (B, T, H, K) = {tuple(q.shape)}, got {tuple(k.shape)}")
    if tuple(g.shape) != (B, T, H, K):
        raise ValueError(f"log_decay must have q's shape (B, T, H, K) = {tuple(q.shape)}, got {tuple(g.shape)}")
    if tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"v must have shape (B, T, H, V) with (B, T, H) = {(B, T, H)}, got {tuple(v.shape)}")
    V = v.shape[3]
    if h0 is not None:
        _check_tensor("h0", h0)
        if tuple(h0.shape) != (B, H, K, V):
            raise ValueError(f"h0 must have shape (B, H, K, V) = {(B, H, K, V)}, got {tuple(h0.shape)}")
    _check_devices(q=q, k=k, v=v, log_decay=g, h0=h0)
    return B, T, H, K, V


# ---------------------------------------------------------------------------- reference


def naive_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence itself, one token at a time: the reference every other form is tested against.

    Returns o (B, T, H, V) in the promoted dtype of q, k, v, and the final state
    S_T (B, H, K, V) in the accumulation dtype (at least float32).
    """
    B, T, H, K, V = _check_gla(q, k, v, log_decay, h0)
    out_dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    acc = accum_dtype(q, k, v, log_decay) if h0 is None else accum_dtype(q, k, v, log_decay, h0)
    q, k, v, a = q.to(acc), k.to(acc), v.to(acc), log_decay.to(acc).exp()
    S = torch.zeros(B, H, K, V, dtype=acc, device=q.device) if h0 is None else h0.to(acc)
    outs = []
    for t in range(T):
        S = a[:, t, :, :, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, K, V)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, V)
    return o.to(out_dtype), S


def gla_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    log_decay_t: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q_t, k_t, log_decay_t (B, H, K), v_t (B, H, V), state (B, H, K, V) or None.

    Returns o_t (B, H, V) in the inputs' dtype and the new state in float32 (float64
    for float64 inputs), O(1) in the sequence length.
    """
    for name, t in (("q_t", q_t), ("k_t", k_t), ("v_t", v_t), ("log_decay_t", log_decay_t)):
        _check_tensor(name, t)
        if t.dim() != 3:
            raise ValueError(f"{name} must have shape (B, H, {'V' if name == 'v_t' else 'K'}), got {tuple(t.shape)}")
    q, k, v, g = (t.unsqueeze(1) for t in (q_t, k_t, v_t, log_decay_t))  # (B, 1, H, F)
    _check_gla(q, k, v, g, state)
    acc = accum_dtype(q, k, v, g) if state is None else accum_dtype(q, k, v, g, state)
    S = k.to(acc)[:, 0, :, :, None] * v.to(acc)[:, 0, :, None, :]  # (B, H, K, V)
    if state is not None:
        S = torch.addcmul(S, g.to(acc)[:, 0].exp().unsqueeze(-1), state.to(acc))
    o = torch.einsum("bhk,bhkv->bhv", q.to(acc)[:, 0], S)
    out_dtype = torch.promote_types(torch.promote_types(q_t.dtype, k_t.dtype), v_t.dtype)
    return o.to(out_dtype), S


# ---------------------------------------------------------------------------- chunked form


def chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    h0: torch.Tensor | None = None,
    chunk_size: int = 64,
    sub_chunk: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``naive_gla`` in chunks of ``chunk_size`` tokens, split into sub-chunks of ``sub_chunk``.

    Same arguments and results as ``naive_gla``. ``sub_chunk`` must divide
    ``chunk_size``; the module docstring says why every exponent taken is <= 0.
    """
    B, T, H, K, V = _check_gla(q, k, v, log_decay, h0)
    chunk_size, sub_chunk = int(chunk_size), int(sub_chunk)
    if sub_chunk <= 0 or chunk_size <= 0 or chunk_size % sub_chunk:
        raise ValueError(f"chunk_size ({chunk_size}) must be a positive multiple of sub_chunk ({sub_chunk})")
    out_dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    acc = accum_dtype(q, k, v, log_decay) if h0 is None else accum_dtype(q, k, v, log_decay, h0)
    if T == 0:
        S = torch.zeros(B, H, K, V, dtype=acc, device=q.device) if h0 is None else h0.to(acc)
        return v.new_zeros(B, 0, H, V, dtype=out_dtype), S
    # Products mix the positions of a chunk, so a NaN or Inf anywhere in it would reach earlier outputs
    # (0 * NaN), and a decay of exactly 0 (g = -inf) would give -inf - (-inf): compute on finite values
    # and mark afterwards what the sequential loop makes non-finite
    bad_o, bad_S = _nonfinite(q, k, v, log_decay, h0)
    q, k, v, log_decay, h0 = _finite_inputs(q, k, v, log_decay, h0, acc)
    c = sub_chunk
    C = min(chunk_size, -(-T // c) * c)  # a short sequence is one chunk, rounded up to sub-chunks
    N, n = -(-T // C), C // c  # chunks, sub-chunks per chunk
    pad = N * C - T

    def heads_first(t: torch.Tensor) -> torch.Tensor:
        # (B, T, H, F) -> (B, H, N, C, F); padding: k = v = 0 adds nothing, g = 0 keeps the state
        t = t.to(acc).transpose(1, 2)
        if pad:
            t = torch.nn.functional.pad(t, (0, 0, 0, pad))
        return t.reshape(B, H, N, C, t.shape[-1])

    q_, k_, v_, g_ = heads_first(q), heads_first(k), heads_first(v), heads_first(log_decay)
    # Log decays as sums of non-positive terms, kept small where the nearest (largest)
    # pairs need them: a difference of two long cumulative sums would lose eps * |sum|.
    gs = g_.view(B, H, N, n, c, K)
    loc = gs.cumsum(dim=4)  # (B, H, N, n, c, K): from sub-chunk start to i, inclusive
    tot = loc[:, :, :, :, -1]  # (B, H, N, n, K): over each whole sub-chunk
    end = tot.cumsum(dim=3)  # (B, H, N, n, K): from chunk start to the end of sub-chunk I
    start = torch.cat([torch.zeros_like(end[:, :, :, :1]), end[:, :, :, :-1]], dim=3)  # r_I, before I
    tail = tot.unsqueeze(4) - loc  # (B, H, N, n, c, K): from j + 1 to the end of j's sub-chunk
    qs, ks = q_.view(B, H, N, n, c, K), k_.view(B, H, N, n, c, K)

    # --- pairs in earlier sub-chunks J < I: exp(b_i - r_I) = exp(loc_i), exp(r_I - b_j) below
    between = start.unsqueeze(4) - end.unsqueeze(3)  # (B, H, N, n_I, n_J, K): r_I - end_J, 0 for J = I - 1
    sub = torch.arange(n, device=q.device)
    earlier = (sub.view(n, 1) > sub.view(1, n)).view(n, n, 1, 1)  # (n_I, n_J, 1, 1)
    # where J >= I the exponent may be positive: take exp(-inf) = 0 there, never an overflow
    e_off = torch.where(earlier, between.unsqueeze(5) + tail.unsqueeze(3), float("-inf"))  # (B,H,N,n,n,c,K)
    k_off = (ks.unsqueeze(3) * e_off.exp()).reshape(B, H, N, n, C, K)
    A = (qs * loc.exp()) @ k_off.transpose(-1, -2)  # (B, H, N, n, c, C)

    # --- pairs inside one sub-chunk, elementwise: exp(loc_i - loc_j) for j <= i
    i_pos = torch.arange(c, device=q.device)
    causal = (i_pos.view(c, 1) >= i_pos.view(1, c)).view(c, c, 1)  # (c_i, c_j, 1)
    e_in = torch.where(causal, loc.unsqueeze(5) - loc.unsqueeze(4), float("-inf"))  # (B,H,N,n,c,c,K)
    A_in = (qs.unsqueeze(5) * ks.unsqueeze(4) * e_in.exp()).sum(-1)  # (B, H, N, n, c, c)
    eye = torch.eye(n, dtype=acc, device=q.device).view(n, 1, n, 1)
    A = A + (A_in.unsqueeze(5) * eye).reshape(B, H, N, n, c, C)  # sub-chunk I's diagonal block
    o = A.reshape(B, H, N, C, C) @ v_  # (B, H, N, C, V)

    # --- the state carried across chunks: exp(b_i) = exp(r_I + loc_i), exp(b_C - b_j) as above
    to_end = (end[:, :, :, -1:] - end).unsqueeze(4) + tail  # (B, H, N, n, c, K): from j + 1 to chunk end
    U = (ks * to_end.exp()).reshape(B, H, N, C, K).transpose(-1, -2) @ v_  # (B, H, N, K, V): chunk m's input
    decay = end[:, :, :, -1].exp().unsqueeze(-1)  # (B, H, N, K, 1)
    # S_m = decay_m S_(m-1) + U_m over the N chunks: one diagonal linear recurrence with (B H) as
    # the batch and (K, V) as channels, so one scan call (one kernel on CUDA), not a loop of N steps
    # that torch.compile would unroll. Its output and state come back in acc (float32, or float64)
    S0 = None if h0 is None else h0.to(acc).reshape(B * H, K, V)
    states, S = linear_scan(decay.reshape(B * H, N, K, 1), U.reshape(B * H, N, K, V), S0, return_state=True)
    states = states.view(B, H, N, K, V)
    first = torch.zeros_like(states[:, :, :1]) if h0 is None else S0.view(B, H, 1, K, V)
    S_before = torch.cat([first, states[:, :, :-1]], dim=2)  # (B, H, N, K, V): the state entering chunk m
    S = S.view(B, H, K, V)
    q_dec = (qs * (start.unsqueeze(4) + loc).exp()).reshape(B, H, N, C, K)
    o = o + q_dec @ S_before  # (B, H, N, C, V)
    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)  # (B, T, H, V)
    # masked_fill with a Python scalar: no host-to-device copy (a decode step must never synchronize)
    return o.masked_fill(bad_o, float("nan")).to(out_dtype), S.masked_fill(bad_S, float("nan"))


def _nonfinite(q, k, v, g, h0) -> tuple[torch.Tensor, torch.Tensor]:
    """Where ``naive_gla``'s outputs (B, T, H, V) and final state (B, H, K, V) are non-finite, from where
    its inputs are: S_t[i, c] once any k_s[i], g_s[i] (NaN or +inf) or v_s[c] at s <= t, or h0[i, c], is;
    o_t[:, c] once any S_t[i, c] is, or any q_t[i] (a product with NaN or Inf is never finite, and a
    state's NaN is never forgotten: exp(-inf) * NaN is NaN). A decay of 0 (g = -inf) is finite."""
    key = ~torch.isfinite(k) | torch.isnan(g) | (g == float("inf"))  # (B, T, H, K)
    key_seen = _seen(key)  # (B, T, H, K): a row i of the state is non-finite from here
    val_seen = _seen(~torch.isfinite(v))  # (B, T, H, V): a column c, from here
    bad_o = val_seen | key_seen.any(-1, keepdim=True) | (~torch.isfinite(q)).any(-1, keepdim=True)
    bad_S = key_seen[:, -1].unsqueeze(-1) | val_seen[:, -1].unsqueeze(-2)  # (B, H, K, V)
    if h0 is not None:
        bad_h0 = ~torch.isfinite(h0)  # (B, H, K, V)
        bad_o = bad_o | bad_h0.any(2).unsqueeze(1)
        bad_S = bad_S | bad_h0
    return bad_o, bad_S


def _seen(bad: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) bool -> at each t, whether ``bad`` holds anywhere in [0, t]: by the first t where it does (a
    min reduction), not by a running sum, which ``torch.compile`` turned into a scan over int64 that Inductor's
    Triton code generation failed on (torch 2.11, SPEN with gla compiled on an H100)."""
    T = bad.shape[1]
    t = torch.arange(T, device=bad.device).view(1, T, *(1,) * (bad.dim() - 2))
    return t >= torch.where(bad, t, T).amin(1, keepdim=True)


def _finite_inputs(q, k, v, g, h0, acc: torch.dtype) -> tuple:
    """The inputs with every non-finite value made finite (0; a log decay of -inf, or below, to a value
    whose exp is 0 in ``acc``: a reset stays a reset, and sums of log decays stay finite)."""
    def finite(t):
        return torch.where(torch.isfinite(t), t, 0.0)

    g_min = 2.0 * math.log(torch.finfo(acc).tiny)  # -174.7 in float32, -1416.8 in float64: exp is 0
    g = torch.where(torch.isnan(g) | (g == float("inf")), 0.0, g).clamp_min(g_min)
    return finite(q), finite(k), finite(v), g, None if h0 is None else finite(h0)


# ---------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class GLABackend:
    """A GLA implementation: ``fn(q, k, v, log_decay, h0) -> (o in the inputs' dtype, S_T float32)``,
    differentiable in every input. ``needs_cuda`` backends run only on CUDA tensors."""

    name: str
    fn: Callable
    needs_cuda: bool = False


GLA_BACKENDS: dict[str, GLABackend] = {"torch": GLABackend("torch", chunk_gla)}
_warned: set[str] = set()


def register_gla_backend(backend: GLABackend) -> None:
    """Make a GLA kernel selectable by name (and by ``"auto"`` on CUDA when it ``needs_cuda``).

    A kernel registered here must agree with ``naive_gla``: values, final state and the
    gradients of q, k, v, log_decay and h0; ``tests/ops/test_gla.py`` shows the checks.
    """
    if backend.name in ("auto", "naive"):
        raise ValueError(f"GLA backend name {backend.name!r} is reserved")
    GLA_BACKENDS[backend.name] = backend


def available_gla_backends() -> list[str]:
    return sorted(set(GLA_BACKENDS) | {"auto", "naive"})


def resolve_gla_backend(backend: str, device: torch.device) -> str:
    """Name of the GLA backend that will run: 'naive', 'torch' or a registered kernel.

    ``"auto"`` takes a registered CUDA kernel for CUDA tensors, else the PyTorch path.
    """
    if backend == "naive":
        return "naive"
    if backend == "auto":
        if device.type == "cuda":
            for name, be in GLA_BACKENDS.items():
                if be.needs_cuda:
                    return name
        return "torch"
    if backend not in GLA_BACKENDS:
        raise ValueError(f"unknown GLA backend {backend!r}; choose one of {available_gla_backends()}")
    if GLA_BACKENDS[backend].needs_cuda and device.type != "cuda":
        if backend not in _warned:
            _warned.add(backend)
            warnings.warn(f"GLA backend {backend!r} needs a CUDA tensor; falling back to 'torch'", RuntimeWarning,
                          stacklevel=3)
        return "torch"
    return backend


def gated_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    h0: torch.Tensor | None = None,
    return_state: bool = False,
    backend: str = "auto",
):
    """GLA over a whole sequence: ``S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t``.

    Args:
        q, k: (B, T, H, K) queries and keys (no scaling is applied: scale q yourself).
        v: (B, T, H, V) values.
        log_decay: (B, T, H, K), g_t <= 0; e.g. ``logsigmoid(z) / tau`` as in GLA.
        h0: initial state (B, H, K, V); zeros when None.
        return_state: also return the final state S_T (B, H, K, V), float32.
        backend: "auto", "torch" (``chunk_gla``), "naive" or a registered kernel.

    Returns:
        o (B, T, H, V) in the promoted dtype of q, k, v; with ``return_state``, (o, S_T).
    """
    _check_gla(q, k, v, log_decay, h0)
    name = resolve_gla_backend(backend, q.device)
    fn = naive_gla if name == "naive" else GLA_BACKENDS[name].fn
    o, S = fn(q, k, v, log_decay, h0)
    return (o, S) if return_state else o
