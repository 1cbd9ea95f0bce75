"""Top-k sparse feed-forward: y = W2 topk(act(W1 c)), k units active per token.

The paper's block keeps 6% of the FFN units (k = ceil(0.06 d_ff)); the rest are
set to zero, k-winners-take-all style. Gradients reach only the k kept units. The
computation here is dense (scatter into d_ff, then a full matmul), which is the
fast choice on GPUs at these widths; the sparsity is in the activations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


def active_units(fraction: float, d_ff: int) -> int:
    """k = ceil(fraction * d_ff), robust to float round-off (0.06 * 100 is 6.000000000000001)."""
    return max(1, math.ceil(round(fraction * d_ff, 6)))


class SparseFFN(nn.Module):
    """c (..., d_in) -> y (..., d_out) through d_ff units of which k are kept per token."""

    def __init__(self, d_in: int, d_ff: int, d_out: int, k: int, act: str = "relu"):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; choose one of {sorted(ACTIVATIONS)}")
        if not 1 <= k <= d_ff:
            raise ValueError(f"k must lie in [1, d_ff={d_ff}], got {k}")
        self.k, self.d_ff, self.act_name = k, d_ff, act
        self.act = ACTIVATIONS[act]
        self.up = nn.Linear(d_in, d_ff, bias=False)  # W1
        self.down = nn.Linear(d_ff, d_out, bias=False)  # W2
        self.down.residual_out = True  # scaled init, as for every projection into the residual

    def hidden(self, c: torch.Tensor) -> torch.Tensor:
        """The sparse code topk(act(W1 c)): (..., d_ff) with k kept entries per token."""
        a = self.act(self.up(c))  # (..., d_ff)
        if self.k == self.d_ff:
            return a
        vals, idx = torch.topk(a, self.k, dim=-1)  # (..., k)
        return torch.zeros_like(a).scatter(-1, idx, vals)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.down(self.hidden(c))

    def extra_repr(self) -> str:
        return f"d_ff={self.d_ff}, k={self.k} ({self.k / self.d_ff:.1%} active), act={self.act_name}"
