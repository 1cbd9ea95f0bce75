"""``ema``: the paper's fixed multi-timescale EMA traces (no parameters).

    h_t^(s) = (1 - alpha_s) h_{t-1}^(s) + alpha_s x_t,   h_0 = 0,   alpha = (0.5, 0.1, 0.02)

The state is h_T (B, S, D) in float32; a one-token call takes the O(1) step path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from emaprobe.layers.base import ContextMixer, check_alphas, register_mixer
from emaprobe.ops import DEFAULT_ALPHAS, ema_step, ema_traces


@register_mixer("ema")
class EMAMixer(ContextMixer):
    """Fixed-decay traces, ``emaprobe.ops.ema_traces``; y (B, T, S, D) in x's dtype."""

    def __init__(self, d_model: int, alphas: Sequence[float] = DEFAULT_ALPHAS, backend: str = "auto"):
        vals = check_alphas(alphas)
        super().__init__(d_model, len(vals))
        self.alphas = vals
        self.backend = backend

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        self.check_input(x)
        if x.shape[1] == 1:
            h = ema_step(x[:, 0], state, self.alphas)  # (B, S, D) float32
            return h.unsqueeze(1).to(x.dtype), h
        y, h = ema_traces(x, self.alphas, h0=state, return_state=True, backend=self.backend)
        # clone: h is a view of the float32 scan output, which would otherwise stay alive
        return y, h.clone()

    def traces_and_input(self, x: torch.Tensor, state: torch.Tensor | None = None):
        """The traces with x as slot S, written by the same scan: alpha = 1 is a trace with no
        memory, h_t = x_t exactly, so one more timescale writes x beside the S traces in the same
        launch (up to 4 timescales a launch), and no (B, T, S + 1, D) concatenation is made."""
        if x.shape[1] == 1:
            return super().traces_and_input(x, state)
        self.check_input(x)
        if state is not None:  # the memoryless slot's state is never read (its decay is 0)
            state = torch.cat([state, state.new_zeros(state.shape[0], 1, state.shape[2])], dim=1)
        y, h = ema_traces(x, self.alphas + (1.0,), h0=state, return_state=True, backend=self.backend)
        return y, h[:, : self.n_scales].clone()

    def fixed_recurrence(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(1 - alpha_s, alpha_s): h_t = (1 - alpha_s) h_{t-1} + alpha_s x_t, as the scan computes it."""
        return tuple(1.0 - a for a in self.alphas), self.alphas

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, alphas={self.alphas}"
