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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emaprobe.layers.base import ContextMixer, check_alphas, register_mixer
from emaprobe.ops import DEFAULT_ALPHAS

KVCache = tuple[torch.Tensor, torch.Tensor]


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
