"""Top-k sparse feed-forward: y = W2 topk(act(W1 c)), k units active per token.

The paper's block keeps 6% of the FFN units (k = ceil(0.06 d_ff)); the rest are
set to zero, k-winners-take-all style. Gradients reach only the k kept units. The
down projection runs in one of the forms of ``emaprobe.ops.topk_ffn``, chosen by
``impl``: ``dense`` (topk, a scatter into d_ff, then one full GEMM), ``gather`` (a weighted
sum of the k kept columns of W2, skipping the zeros; faster on CPU), ``mask`` (the code made
in one pass, then the full GEMM; relu only; what CUDA runs) or ``auto`` (by device). All give
the same values and gradients (``mask`` may keep other units among ties at the k-th value).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from emaprobe.ops.sparse_ffn import ACTIVATIONS, check_ffn_impl, topk_code, topk_ffn


def active_units(fraction: float, d_ff: int) -> int:
    """k = ceil(fraction * d_ff), robust to float round-off (0.06 * 100 is 6.000000000000001)."""
    return max(1, math.ceil(round(fraction * d_ff, 6)))


class SparseFFN(nn.Module):
    """c (..., d_in) -> y (..., d_out) through d_ff units of which k are kept per token.

    ``impl``: "auto" (default), "dense" or "gather"; see ``emaprobe.ops.sparse_ffn``. It
    changes no parameter, so a checkpoint loads under any of them.
    """

    def __init__(self, d_in: int, d_ff: int, d_out: int, k: int, act: str = "relu", impl: str = "auto"):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; choose one of {sorted(ACTIVATIONS)}")
        if not 1 <= k <= d_ff:
            raise ValueError(f"k must lie in [1, d_ff={d_ff}], got {k}")
        self.k, self.d_ff, self.act_name = k, d_ff, act
        self.impl = check_ffn_impl(impl, act)
        self.act = ACTIVATIONS[act]
        self.up = nn.Linear(d_in, d_ff, bias=False)  # W1
        self.down = nn.Linear(d_ff, d_out, bias=False)  # W2
        self.down.residual_out = True  # scaled init, as for every projection into the residual

    def hidden(self, c: torch.Tensor) -> torch.Tensor:
        """The sparse code topk(act(W1 c)): (..., d_ff) with k kept entries per token."""
        a = self.act(self.up(c))  # (..., d_ff)
        if self.k == self.d_ff:
            return a
        vals, idx = topk_code(a, self.k)  # (..., k)
        return torch.zeros_like(a).scatter(-1, idx, vals)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return topk_ffn(c, self.up.weight, self.down.weight, self.k, self.act_name, self.impl)  # (..., d_out)

    def extra_repr(self) -> str:
        return (
            f"d_ff={self.d_ff}, k={self.k} ({self.k / self.d_ff:.1%} active), act={self.act_name}, impl={self.impl}"
        )
