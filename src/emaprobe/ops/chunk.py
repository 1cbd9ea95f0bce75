"""Chunked scans in plain PyTorch: no Python loop over T, float32 accumulation.

Both scans split time into chunks of C steps (symbols as in ``naive.py``):

1. inside every chunk, all chunks at once, compute the scan started from zero;
2. scan the chunk-end states across chunks (a sequence T/C long, done by the same
   function, so the recursion depth is log_C T);
3. add each chunk's incoming state, decayed by the cumulative decay inside it.

``chunk_linear_scan`` does step 1 with a loop over the C positions of a chunk
(vectorised over B, T/C and features); any decay works, negative or above one,
and nothing is divided or logged, so it is stable for any T.

``chunk_ema_traces`` knows the decays are fixed, so step 1 and step 3 become one
matrix product per chunk with a (C*S, C+S) lower-triangular Toeplitz matrix:
[x_chunk ; h_in] -> h_chunk. That puts the work on the BLAS matmul (the idea of
chunked linear attention and SSD/Mamba-2's "state passing"; Dao & Gu 2024).

Non-finite input stays causal, as in the sequential loop: a NaN or Inf at step t
changes no output before t. The loop of ``chunk_linear_scan`` gives that for free.
The Toeplitz product does not (its zeros above the diagonal times NaN are NaN, so
one bad step would poison its whole chunk back to the chunk's start), so
``chunk_ema_traces`` notices a non-finite chunk-end state, which any non-finite
input in the chunk produces, and then takes the loop path instead.

These functions carry no autograd of their own; ``scan.py`` wraps them.
"""

from __future__ import annotations

import torch

from emaprobe.ops.naive import accum_dtype

SCAN_CHUNK = 64
EMA_CHUNK = 32


def _pad_time(t: torch.Tensor, length: int, value: float) -> torch.Tensor:
    pad = length - t.shape[1]
    if pad == 0:
        return t
    filler = torch.full((t.shape[0], pad) + tuple(t.shape[2:]), value, dtype=t.dtype, device=t.device)
    return torch.cat([t, filler], dim=1)


def chunk_linear_scan(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, chunk: int = SCAN_CHUNK
) -> torch.Tensor:
    """Scan ``h_t = a_t h_{t-1} + b_t``; a broadcasts to b (B, T, *F).

    ``a`` may be constant in time (size 1 on dim 1) and constant over B; that
    case never materialises a full-size decay tensor. Returns h (B, T, *F) in
    float32, or float64 when an input is float64.
    """
    acc = accum_dtype(a, b) if h0 is None else accum_dtype(a, b, h0)  # a float64 h0 keeps float64, as naive's
    b = b.to(acc)
    a = a.to(acc)
    while a.dim() < b.dim():
        a = a.unsqueeze(0)
    shape = torch.broadcast_shapes(a.shape, b.shape)
    B, T = shape[0], shape[1]
    feat = tuple(shape[2:])
    b = b.expand(shape)
    h0 = None if h0 is None else h0.to(acc).expand((B,) + feat)
    timevar = a.shape[1] != 1
    if T <= chunk:
        out = torch.empty(shape, dtype=acc, device=b.device)
        # from a zero state, not from b_0: a_0 * 0 is NaN where a_0 is, as in the sequential loop and in the
        # chunked path below, so a sequence's outputs do not depend on how long it is
        h = torch.zeros((B,) + feat, dtype=acc, device=b.device) if h0 is None else h0
        for t in range(T):
            at = a[:, t] if timevar else a[:, 0]
            h = torch.addcmul(b[:, t], at, h)
            out[:, t] = h
        return out
    n = -(-T // chunk)
    b = _pad_time(b.contiguous(), n * chunk, 0.0).view((B, n, chunk) + feat)
    if timevar:
        a = _pad_time(a.expand((a.shape[0], T) + feat).contiguous(), n * chunk, 1.0)
        a = a.view((a.shape[0], n, chunk) + feat)
    else:
        a = a.unsqueeze(1)  # (B|1, 1, 1, *F|1): the same decay at every position
    hloc = torch.empty((B, n, chunk) + feat, dtype=acc, device=b.device)
    hloc[:, :, 0] = b[:, :, 0]
    pshape = (a.shape[0], n if timevar else 1, chunk) + tuple(a.shape[3:])
    cum = torch.empty(pshape, dtype=acc, device=b.device)  # decay from chunk start
    cum[:, :, 0] = a[:, :, 0]
    for c in range(1, chunk):
        ac = a[:, :, c] if timevar else a[:, :, 0]
        torch.addcmul(b[:, :, c], ac, hloc[:, :, c - 1], out=hloc[:, :, c])
        torch.mul(cum[:, :, c - 1], ac, out=cum[:, :, c])
    ends = hloc[:, :, -1]  # (B, n, *F) local chunk-end states
    ends = chunk_linear_scan(cum[:, :, -1], ends, h0, chunk)  # true chunk-end states
    if h0 is None:
        hin = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1]], dim=1)
    else:
        hin = torch.cat([h0.unsqueeze(1), ends[:, :-1]], dim=1)
    hloc.addcmul_(cum, hin.unsqueeze(2))
    return hloc.view((B, n * chunk) + feat)[:, :T]


def _ema_kernels(alphas: torch.Tensor, chunk: int, dtype: torch.dtype):
    """Toeplitz matrices for one chunk; alphas (S,) float64 for accurate powers."""
    S = alphas.numel()
    t = torch.arange(chunk, dtype=torch.float64, device=alphas.device)
    lag = t.view(-1, 1) - t.view(1, -1)  # (C, C): t - c
    decay = (1.0 - alphas).view(S, 1, 1)
    L = torch.where(lag >= 0, alphas.view(S, 1, 1) * decay ** lag.clamp(min=0), torch.zeros((), dtype=torch.float64))
    # rows ordered (t, s) so that the product lands directly in (B, T, S, D) layout
    Lr = L.permute(1, 0, 2).reshape(chunk * S, chunk)
    P = torch.zeros(chunk, S, S, dtype=torch.float64, device=alphas.device)
    P[:, torch.arange(S), torch.arange(S)] = decay.view(1, S) ** (t.view(-1, 1) + 1)
    Laug = torch.cat([Lr, P.reshape(chunk * S, S)], dim=1)  # (C*S, C+S)
    ends = L[:, -1, :]  # (S, C): weights of a chunk's inputs in its local end state
    return Laug.to(dtype), ends.to(dtype), (decay.view(S) ** chunk).to(dtype)


def chunk_ema_traces(
    x: torch.Tensor, alphas: torch.Tensor, h0: torch.Tensor | None = None, chunk: int = EMA_CHUNK
) -> torch.Tensor:
    """EMA traces: x (B, T, D), alphas (S,) -> h (B, T, S, D), float32 (float64 for float64 x)."""
    B, T, D = x.shape
    S = alphas.numel()
    acc = accum_dtype(x) if h0 is None else accum_dtype(x, h0)
    x = x.to(acc)
    if T <= chunk:
        chunk = max(T, 1)
    n = -(-T // chunk)
    Laug, wend, dchunk = _ema_kernels(alphas.to(device=x.device, dtype=torch.float64), chunk, acc)
    xc = _pad_time(x, n * chunk, 0.0).view(B, n, chunk, D)
    ends = torch.matmul(wend, xc)  # (B, n, S, D) local chunk-end states
    if not bool(torch.isfinite(ends).all()) or (h0 is not None and not bool(torch.isfinite(h0).all())):
        # a NaN/Inf input: the Toeplitz product would smear it over the earlier steps of its
        # chunk, and a bad h0 over the other timescales (0 * NaN = NaN), so run the causal
        # loop path. Checked on the small ends tensor (S/C of x's size): a NaN/Inf anywhere
        # in a chunk makes its end state non-finite, even through a zero weight (0 * Inf = NaN)
        decay = (1.0 - alphas.to(device=x.device, dtype=acc)).view(1, 1, S, 1)
        b = alphas.to(device=x.device, dtype=acc).view(1, 1, S, 1) * x.unsqueeze(2)  # (B, T, S, D)
        return chunk_linear_scan(decay, b, h0)
    ends = chunk_linear_scan(dchunk.view(1, 1, S, 1), ends, h0)  # true chunk-end states
    first = torch.zeros(B, 1, S, D, dtype=acc, device=x.device) if h0 is None else h0.to(acc).unsqueeze(1)
    hin = torch.cat([first, ends[:, :-1]], dim=1)  # (B, n, S, D) state entering each chunk
    xa = torch.cat([xc, hin], dim=2)  # (B, n, C+S, D)
    h = torch.matmul(Laug, xa)  # (B, n, C*S, D)
    h = h.view(B, n * chunk, S, D)
    return h if n * chunk == T else h[:, :T]
