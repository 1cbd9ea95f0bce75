"""``selective``: input-dependent decay with an input gate (HGRN / GLA-like).

    a_t = sigmoid(W_a x_t + beta_a)          decay, (S, D) per token, in (0, 1)
    i_t = sigmoid(W_i x_t + beta_i)          input gate, (S, D) per token
    h_t = a_t * h_{t-1} + (1 - a_t) * i_t * x_t

beta_a starts at logit(1 - alpha_s) and the projections near zero, so at
initialisation the layer is the paper's traces scaled by one half; training can
then choose, token by token, what to keep and what to let in. This is the fix the
paper's conclusion points to ("only learned, input-dependent selection"), in the
form of HGRN (Qin et al. 2023) and GLA (Yang et al. 2024). As in GLA the gate
projection may be low rank: W = W_up W_down with inner width ``rank`` (0 = full).
The recurrence runs as ``ops.gated_scan``: on CUDA the gates are computed inside the scan's
kernels, so the float32 decays and inputs (B, T, S, D) never reach memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from emaprobe.layers.base import ContextMixer, check_alphas, no_weight_decay, register_mixer
from emaprobe.ops import DEFAULT_ALPHAS, gate_inputs, gated_scan, linear_scan_step


@register_mixer("selective")
class SelectiveMixer(ContextMixer):
    """Input-dependent decays through ``gated_scan``; y (B, T, S, D) in x's dtype."""

    def __init__(
        self, d_model: int, alphas: Sequence[float] = DEFAULT_ALPHAS, rank: int = 64, backend: str = "auto"
    ):
        vals = check_alphas(alphas, learned=True)
        super().__init__(d_model, len(vals))
        if int(rank) < 0:
            raise ValueError(f"rank must be >= 0 (0 = full rank), got {rank}")
        self.init_alphas = vals
        self.rank = int(rank)
        self.backend = backend
        S, D = len(vals), d_model
        if self.rank:
            self.gate_down = nn.Linear(D, self.rank, bias=False)
            self.gate_up = nn.Linear(self.rank, 2 * S * D, bias=False)
        else:
            self.gate_proj = nn.Linear(D, 2 * S * D, bias=False)
        self.decay_bias = no_weight_decay(nn.Parameter(torch.empty(S, D)))  # beta_a
        self.gate_bias = no_weight_decay(nn.Parameter(torch.empty(S, D)))  # beta_i
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for s, a in enumerate(self.init_alphas):
                self.decay_bias[s].fill_(math.log((1.0 - a) / a))
            self.gate_bias.zero_()
            for lin in (self.gate_down, self.gate_up) if self.rank else (self.gate_proj,):
                nn.init.normal_(lin.weight, std=0.02)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate_up(self.gate_down(x)) if self.rank else self.gate_proj(x)
        B, T, _ = x.shape
        # the gates themselves are computed in float32 (``gate_inputs``, ``gated_scan``)
        return g.view(B, T, 2, self.n_scales, self.d_model)  # (B, T, 2, S, D)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        self.check_input(x)
        g = self._logits(x)
        if x.shape[1] == 1:
            a, b = gate_inputs(g, x, self.decay_bias, self.gate_bias)  # (B, 1, S, D) each
            h = linear_scan_step(a[:, 0], b[:, 0], state)  # (B, S, D)
            return h.unsqueeze(1).to(x.dtype), h
        y, h = gated_scan(g, x, self.decay_bias, self.gate_bias, h0=state, return_state=True, backend=self.backend)
        return y, h.clone()

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, init_alphas={self.init_alphas}, rank={self.rank or 'full'}"
