"""``learned_ema``: EMA traces whose decay is learned per channel, constant over time.

    h_t^(s) = a^(s) * h_{t-1}^(s) + (1 - a^(s)) * x_t,   a^(s) = sigmoid(theta^(s)) in (0, 1)^D

theta (S, D) starts at logit(1 - alpha_s), so the layer starts as the paper's traces.
Learned, data-independent decays are the Mega / S4D-style step beyond fixed
coefficients (Ma et al. 2023, Gu et al. 2022): the coefficients adapt to the
corpus, but every token is still folded in the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from emaprobe.layers.base import ContextMixer, check_alphas, no_weight_decay, register_mixer
from emaprobe.ops import DEFAULT_ALPHAS, accum_dtype, linear_scan, linear_scan_step


@register_mixer("learned_ema")
class LearnedEMAMixer(ContextMixer):
    """Learned per-channel decays through ``linear_scan``; y (B, T, S, D) in x's dtype."""

    def __init__(self, d_model: int, alphas: Sequence[float] = DEFAULT_ALPHAS, backend: str = "auto"):
        vals = check_alphas(alphas, learned=True)
        super().__init__(d_model, len(vals))
        self.init_alphas = vals
        self.backend = backend
        self.decay_logit = no_weight_decay(nn.Parameter(torch.empty(len(vals), d_model)))  # theta (S, D)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for s, a in enumerate(self.init_alphas):
                self.decay_logit[s].fill_(math.log((1.0 - a) / a))  # logit(1 - alpha_s)

    def decays(self) -> torch.Tensor:
        """a (S, D) in (0, 1), float32."""
        return torch.sigmoid(self.decay_logit.float())

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        self.check_input(x)
        acc = accum_dtype(x, self.decay_logit)  # float32, or float64 for a float64 module and input
        theta = self.decay_logit.to(acc)
        a = torch.sigmoid(theta)  # (S, D)
        # sigmoid(-theta) is 1 - a without the cancellation of 1 - sigmoid(theta) near a = 1
        b = torch.sigmoid(-theta) * x.to(acc).unsqueeze(2)  # (B, T, S, D)
        if x.shape[1] == 1:
            h = linear_scan_step(a.expand_as(b[:, 0]), b[:, 0], state)  # (B, S, D)
            return h.unsqueeze(1).to(x.dtype), h
        y, h = linear_scan(a.view(1, 1, *a.shape), b, h0=state, return_state=True, backend=self.backend)
        return y.to(x.dtype), h.clone()

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, init_alphas={self.init_alphas}"
