"""``attention``: causal softmax attention as a context mixer, and the KV-cached
attention call every attention in emaprobe goes through.

How attention fits the mixer interface (B, T, D) -> (B, T, S, D): one head per
timescale. Head s forms a softmax-weighted average of the inputs x_{<=t},

    y_t^(s) = sum_{j<=t} softmax_j(q_t^(s) . k_j^(s) / sqrt(E)) x_j,
    q^(s) = W_q^(s) x,  k^(s) = W_k^(s) x   (E = key_dim per head),

which is the EMA trace with its fixed weights alpha (1 - alpha)^(t-j) replaced by
content-based ones. The values are the inputs themselves, as for the traces:
whatever reads y downstream is linear in it (SPEN's predictor and context mix), so
a per-head value projection would be redundant there. No positional encoding:
order enters through the causal mask only, as SPEN carries no positions either.
The state is the KV cache ``(k (B, S, P, E), v (B, 1, P, D))`` over P past tokens.

Two caches: ``cached_attention`` grows its cache by concatenation (SPEN's attention
mixer and predictor); ``fixed_kv_attention`` writes into buffers preallocated to a
fixed capacity, so that a one-token step keeps every shape (GPT's generation, compiled).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emaprobe.layers.base import ContextMixer, check_alphas, register_mixer
from emaprobe.ops import DEFAULT_ALPHAS

KVCache = tuple[torch.Tensor, torch.Tensor]
# (k (B, H, L, E), v (B, H, L, Ev), n): L slots, the first n filled; n a 0-dim long tensor,
# or None when all L slots are filled (the keys and values of a forward without a cache)
FixedKVCache = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


def cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache: KVCache | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, KVCache]:
    """Causal ``scaled_dot_product_attention`` that continues from a KV cache.

    Args:
        q: (B, H, T, E) queries for the T new positions.
        k: (B, H, T, E) keys of the new positions.
        v: (B, Hv, T, Ev) values; Hv is H or 1 (one value stream shared by all heads).
        cache: (k_past (B, H, P, E), v_past (B, Hv, P, Ev)) or None.

    Returns:
        out (B, H, T, Ev) and the grown cache (k (B, H, P+T, E), v (B, Hv, P+T, Ev)).
    """
    if cache is not None:
        k_past, v_past = cache
        if k_past.shape[:2] != k.shape[:2] or k_past.shape[-1] != k.shape[-1]:
            raise ValueError(f"KV cache keys {tuple(k_past.shape)} do not continue keys {tuple(k.shape)}")
        k = torch.cat([k_past.to(k.dtype), k], dim=2)
        v = torch.cat([v_past.to(v.dtype), v], dim=2)
    B, H, T, _ = q.shape
    L = k.shape[2]
    P = L - T
    vv = v if v.shape[1] == H else v.expand(B, H, L, v.shape[-1])
    if P == 0:
        out = F.scaled_dot_product_attention(q, k, vv, dropout_p=dropout_p, is_causal=True)
    elif T == 1:
        out = F.scaled_dot_product_attention(q, k, vv, dropout_p=dropout_p)
    else:
        # is_causal aligns the mask top-left; with a cache the new queries sit at P..P+T-1
        pos = torch.arange(L, device=q.device)
        mask = pos.view(1, L) <= (P + torch.arange(T, device=q.device)).view(T, 1)  # (T, L)
        out = F.scaled_dot_product_attention(q, k, vv, attn_mask=mask, dropout_p=dropout_p)
    return out, (k, v)


def reserve_kv_cache(cache: FixedKVCache, capacity: int) -> FixedKVCache:
    """``cache`` with buffers of at least ``capacity`` slots and ``n`` as a tensor.

    Copies only when the buffers are smaller (once per generation, after the first
    prompt chunk). The unfilled slots are zeros, not garbage: a masked key still
    meets its value in ``softmax(.) @ v``, and 0 * NaN would be NaN.
    """
    k, v, n = cache
    L = k.shape[2]
    if n is None:
        n = torch.full((), L, dtype=torch.long, device=k.device)
    if L < capacity:
        kb = k.new_zeros(k.shape[0], k.shape[1], capacity, k.shape[3])  # (B, H, capacity, E)
        vb = v.new_zeros(v.shape[0], v.shape[1], capacity, v.shape[3])  # (B, H, capacity, Ev)
        kb[:, :, :L] = k
        vb[:, :, :L] = v
        k, v = kb, vb
    return k, v, n


def fixed_kv_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache: FixedKVCache | None,
    capacity: int,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, FixedKVCache]:
    """Causal attention over a preallocated KV cache, updated in place.

    The idea is gpt-fast's (pytorch-labs/gpt-fast, ``KVCache``): keys and values live in
    buffers of ``capacity`` slots; each call writes its T new positions at n..n+T-1
    (``index_copy_`` at a tensor position) and attends through the mask
    ``slot <= position``, so a one-token step has the same shapes at every n and a
    compiled step replays one graph.

    Args:
        q, k: (B, H, T, E); v: (B, H, T, Ev).
        cache: ``(k_buf (B, H, L, E), v_buf (B, H, L, Ev), n)`` or None. Its buffers are
            written in place (slots < n are never touched, so the passed state still
            describes its own n positions, but a second continuation from it overwrites
            the first's), except where autograd records a graph: then the call writes
            copies, which the earlier calls' backward needs untouched. Buffers smaller
            than ``capacity`` are first moved into new ones.
        capacity: the slots to reserve (GPT's block_size); the caller checks n + T fits.

    Without a cache this is exactly the training path, ``is_causal`` SDPA over the T
    positions, and the returned cache is ``(k, v, None)``, no copy. With one, T = 1
    attends over all ``capacity`` slots (fixed shapes, O(capacity) per token, as
    gpt-fast); T > 1 (a prompt chunk) reads n once and attends over the n + T filled slots.

    Returns:
        out (B, H, T, Ev) and the cache ``(k_buf, v_buf, n + T)``.
    """
    if cache is None:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        return out, (k, v, None)
    k_buf, v_buf, n = reserve_kv_cache(cache, capacity)
    if k_buf.shape[:2] != k.shape[:2] or k_buf.shape[-1] != k.shape[-1]:
        raise ValueError(f"KV cache keys {tuple(k_buf.shape)} do not continue keys {tuple(k.shape)}")
    T = q.shape[2]
    new = n + torch.arange(T, device=q.device)  # (T,) the positions written now
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, k_buf, v_buf)):
        # a graph is recorded: the previous call's attention saved these buffers for its backward, so
        # write new ones (an in-place write would void that backward, from the third chunk on)
        k_buf = k_buf.index_copy(2, new, k.to(k_buf.dtype))
        v_buf = v_buf.index_copy(2, new, v.to(v_buf.dtype))
    else:
        k_buf.index_copy_(2, new, k.to(k_buf.dtype))
        v_buf.index_copy_(2, new, v.to(v_buf.dtype))
    L = k_buf.shape[2]
    if T > 1 and not torch.compiler.is_compiling():
        L = int(n) + T  # one read of n per prompt chunk: skip the empty slots
    mask = torch.arange(L, device=q.device).view(1, L) <= new.view(T, 1)  # (T, L)
    kk, vv = k_buf[:, :, :L].to(q.dtype), v_buf[:, :, :L].to(q.dtype)
    out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, dropout_p=dropout_p)
    return out, (k_buf, v_buf, n + T)


@register_mixer("attention")
class AttentionMixer(ContextMixer):
    """S causal softmax heads averaging the inputs; y (B, T, S, D) in the compute dtype."""

    def __init__(self, d_model: int, alphas=DEFAULT_ALPHAS, key_dim: int = 64):
        # alphas only fix S, so that every mixer has the same S x D context
        S = len(check_alphas(alphas))
        super().__init__(d_model, S)
        if int(key_dim) <= 0:
            raise ValueError(f"key_dim must be positive, got {key_dim}")
        self.key_dim = int(key_dim)
        self.qk = nn.Linear(d_model, 2 * S * self.key_dim, bias=False)
        nn.init.normal_(self.qk.weight, std=0.02)

    def forward(self, x: torch.Tensor, state: KVCache | None = None):
        self.check_input(x)
        B, T, D = x.shape
        S, E = self.n_scales, self.key_dim
        q, k = self.qk(x).view(B, T, 2, S, E).permute(2, 0, 3, 1, 4)  # each (B, S, T, E)
        v = x.to(q.dtype).unsqueeze(1)  # (B, 1, T, D)
        y, cache = cached_attention(q, k, v, state)  # (B, S, T, D)
        return y.transpose(1, 2), cache  # (B, T, S, D)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, heads S={self.n_scales}, key_dim={self.key_dim}"
