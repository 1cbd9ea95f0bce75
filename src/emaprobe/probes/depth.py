"""Dilution over depth: L layers write into one residual stream; what of each write is left at the top?

Symbols: N samples, L layers, V tokens per layer, D width.

Each layer l = 1..L writes fresh content, the embedding e_l(z_l) of its own token
z_l (i.i.d. uniform over V, a random codebook per layer, rows N(0, I/D)), into the
stream: z_l stands for "the input to layer l" that later layers might need. The
stream is accumulated three ways:

    residual       h_l = h_{l-1} + e_l(z_l)                        fixed coefficient 1 (pre-norm residual)
    ema_depth      h_l = (1 - beta) h_{l-1} + beta e_l(z_l)          fixed coefficient, EMA over depth
    learned_gates  h_l = a_l * h_{l-1} + b_l * e_l(z_l)              a_l, b_l in R^D learned per layer
                                                                     (per-channel gates, highway / DenseFormer-like)

The learned gates are trained (AdamW) with one linear head per layer on top to name
every z_l from h_L, then frozen; a fresh linear probe (``probes.linear``) per layer
then measures bits of z_l at the top, H - CE, on held-out samples. For fixed
coefficients no training is needed. What the gates can do that fixed coefficients
cannot: give each layer its own channels, so that writes stop interfering (at the
price of fewer channels each).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MECHANISMS = ("residual", "ema_depth", "learned_gates")


class DepthStack(nn.Module):
    """h_L (N, D) from tokens z (N, L) through one of ``MECHANISMS``."""

    def __init__(self, mechanism: str, n_layer: int, vocab: int, d_model: int, beta: float = 0.5, seed: int = 0):
        super().__init__()
        if mechanism not in MECHANISMS:
            raise ValueError(f"unknown depth mechanism {mechanism!r}; choose one of {list(MECHANISMS)}")
        if n_layer < 1:
            raise ValueError(f"n_layer must be >= 1, got {n_layer}")
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta must lie in (0, 1], got {beta}")
        g = torch.Generator().manual_seed(seed)
        self.mechanism = mechanism
        self.beta = beta
        self.register_buffer("emb", torch.randn(n_layer, vocab, d_model, generator=g) / d_model**0.5)  # (L, V, D)
        if mechanism == "learned_gates":
            # start as the plain residual: keep everything, write everything
            self.keep = nn.Parameter(torch.ones(n_layer, d_model))  # a_l
            self.write = nn.Parameter(torch.ones(n_layer, d_model))  # b_l

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        N, L = z.shape
        if L != self.emb.shape[0]:
            raise ValueError(f"z holds {L} layers' tokens, the stack has {self.emb.shape[0]}")
        writes = self.emb[torch.arange(L, device=z.device)[None, :], z]  # (N, L, D)
        h = torch.zeros(N, writes.shape[-1], device=z.device)
        for l in range(L):
            if self.mechanism == "residual":
                h = h + writes[:, l]
            elif self.mechanism == "ema_depth":
                h = (1.0 - self.beta) * h + self.beta * writes[:, l]
            else:
                h = self.keep[l] * h + self.write[l] * writes[:, l]
        return h  # (N, D)


def train_gates(stack: DepthStack, vocab: int, steps: int, batch: int = 256, lr: float = 1e-2, seed: int = 0) -> list:
    """Train a ``learned_gates`` stack with per-layer heads to name every z_l from h_L."""
    if stack.mechanism != "learned_gates" or steps <= 0:
        return []
    L, _, D = stack.emb.shape
    g = torch.Generator().manual_seed(10_000 + seed)
    heads = nn.Linear(D, L * vocab)
    opt = torch.optim.AdamW(list(stack.parameters()) + list(heads.parameters()), lr=lr, weight_decay=0.0)
    curve = []
    for _ in range(steps):
        z = torch.randint(0, vocab, (batch, L), generator=g)
        logits = heads(stack(z)).view(batch, L, vocab)
        loss = F.cross_entropy(logits.reshape(-1, vocab), z.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(loss.item())
    return curve


__all__ = ["MECHANISMS", "DepthStack", "train_gates"]
