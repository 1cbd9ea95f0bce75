"""SPEN's predictors: x̂_t = P(H_{<t}), a guess of the current input from past context only.

    forward(H (B, T, S, D), h_last (B, S, D) | None, state=None) -> (x̂ (B, T, D), state)

``H[:, t]`` is the context after token t; ``h_last`` is the context before the
first of these T tokens (None at the start of a sequence, meaning zero). A
predictor shifts by one inside, so x̂_t is a function of H_{-1..t-1} only and its
error u_t - x̂_t is what is new at t. Both predictors apply their projections to
every H_t first and shift the (narrower) result, which is the same thing, as the
projections are position-wise.

``linear``: x̂_t = W_P vec(H_{t-1})                         (the paper's block)
``attention``: causal softmax attention over H_{-1..t-1}, query from H_{t-1}
              (the paper's ablation: it reports the same loss as ``linear``)

Every predictor is these two steps, which a caller may run apart:

    z     = predictor.in_proj(vec(H))                  (B, T, F)   position-wise, no bias
    x̂, st = predictor.finish(z, first, state)          first = in_proj(vec(h_last)) or None

so a block that projects H for other uses too (SPEN's bottleneck M) can stack ``in_proj``'s
weight with its own and read H once, in one product (``models/spen.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from emaprobe.layers.attention import KVCache, cached_attention
from emaprobe.layers.base import registering


def _shift(z: torch.Tensor, first: torch.Tensor | None) -> torch.Tensor:
    """(B, T, F) values at H_0..H_{T-1} -> values at H_{-1}..H_{T-2}; ``first`` (B, F) or zeros."""
    head = z.new_zeros(z.shape[0], 1, z.shape[2]) if first is None else first.to(z.dtype).unsqueeze(1)
    return torch.cat([head, z[:, :-1]], dim=1)


def _check(H: torch.Tensor, h_last: torch.Tensor | None, S: int, D: int, who: str) -> None:
    if H.dim() != 4 or tuple(H.shape[2:]) != (S, D):
        raise ValueError(f"{who}: H must have shape (B, T, S={S}, D={D}), got {tuple(H.shape)}")
    if h_last is not None and tuple(h_last.shape) != (H.shape[0], S, D):
        raise ValueError(f"{who}: h_last must have shape {(H.shape[0], S, D)}, got {tuple(h_last.shape)}")


class Predictor(nn.Module):
    """x̂ = finish(in_proj(vec H) shifted by one); subclasses set ``in_proj`` (an ``nn.Linear``
    over S*D inputs, no bias) in ``__init__`` and define ``finish``."""

    in_proj: nn.Linear
    # True where finish(z, first) is exactly the shift of z by one step (x̂_t = in_proj(vec H_{t-1})),
    # with no state and no other operation: a caller may then compute x̂ from H_{t-1} any way it likes
    shift_only: bool = False

    def __init__(self, d_model: int, n_scales: int):
        super().__init__()
        self.d_model, self.n_scales = d_model, n_scales

    def forward(self, H: torch.Tensor, h_last: torch.Tensor | None = None, state=None):
        _check(H, h_last, self.n_scales, self.d_model, type(self).__name__)
        z = self.in_proj(H.flatten(2))  # (B, T, F)
        return self.finish(z, self.project_last(h_last, H.dtype), state)

    def project_last(self, h_last: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """in_proj(vec(h_last)) (B, F) in ``dtype``, or None for a sequence's start."""
        return None if h_last is None else self.in_proj(h_last.flatten(1).to(dtype))

    def finish(self, z: torch.Tensor, first: torch.Tensor | None, state=None):
        """z = in_proj(vec H) (B, T, F), first = in_proj(vec h_last) (B, F) or None -> (x̂ (B, T, D), state)."""
        raise NotImplementedError


PREDICTORS: dict[str, type[Predictor]] = {}


def register_predictor(name: str):
    """Class decorator: make a ``Predictor`` buildable as ``build_predictor(name, ...)`` and so
    nameable in ``SPENConfig.predictor``."""
    return registering(PREDICTORS, Predictor, "predictor_name", name)


@register_predictor("linear")
class LinearPredictor(Predictor):
    """x̂_t = W_P vec(H_{t-1}); W_P (D, S*D), no bias, so an empty past predicts zero."""

    shift_only = True

    def __init__(self, d_model: int, n_scales: int, **_unused):
        super().__init__(d_model, n_scales)
        self.proj = nn.Linear(n_scales * d_model, d_model, bias=False)

    @property
    def in_proj(self) -> nn.Linear:
        return self.proj

    def finish(self, z: torch.Tensor, first: torch.Tensor | None, state=None):
        return _shift(z, first), None  # (B, T, D): W_P vec(H_{t-1})


@register_predictor("attention")
class AttentionPredictor(Predictor):
    """Multi-head causal softmax attention over past contexts H_{-1..t-1}; KV cache as state."""

    def __init__(self, d_model: int, n_scales: int, n_head: int = 4, dropout: float = 0.0, **_unused):
        if d_model % n_head:
            raise ValueError(f"attention predictor: d_model={d_model} is not divisible by n_head={n_head}")
        super().__init__(d_model, n_scales)
        self.n_head = n_head
        self.dropout = dropout
        self.qkv = nn.Linear(n_scales * d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    @property
    def in_proj(self) -> nn.Linear:
        return self.qkv

    def finish(self, z: torch.Tensor, first: torch.Tensor | None, state: KVCache | None = None):
        B, T = z.shape[:2]
        nh, hd = self.n_head, self.d_model // self.n_head
        z = _shift(z, first)  # row t now comes from H_{t-1}
        q, k, v = z.view(B, T, 3, nh, hd).permute(2, 0, 3, 1, 4)  # each (B, nh, T, hd)
        p = self.dropout if self.training else 0.0
        y, cache = cached_attention(q, k, v, state, dropout_p=p)  # (B, nh, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, self.d_model)), cache


def build_predictor(name: str, d_model: int, n_scales: int, **kw) -> Predictor:
    if name not in PREDICTORS:
        raise ValueError(f"unknown predictor {name!r}; choose one of {sorted(PREDICTORS)}")
    return PREDICTORS[name](d_model, n_scales, **kw)
