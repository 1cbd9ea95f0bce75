"""``gla``: gated linear attention, input-dependent decay on a matrix state (GLA / Mamba-2 class).

One head per timescale s = 1..S, each with a d_k x D state (E = ``key_dim`` = d_k):

    q_t^(s), k_t^(s) = W_q^(s) x_t / sqrt(E),  W_k^(s) x_t                        (E,)
    g_t^(s) = logsigmoid(W_g^(s) x_t + beta^(s)) / tau                           (E,), <= 0
    S_t^(s) = diag(exp(g_t^(s))) S_{t-1}^(s) + k_t^(s)T x_t                      (E, D)
    y_t^(s) = RMS(q_t^(s) S_t^(s)) * sigmoid(W_r^(s) x_t + beta_r^(s))           (D,)

This is GLA (Yang et al. 2023, arXiv 2312.06635): the decay gate is low rank with a
temperature (W_g = W_up W_down, inner width ``rank``; tau = 16), and the output is
normalised per head and gated. Where an EMA trace keeps one D-vector per timescale
and can only blur the tokens it has seen, each head here keeps E of them, written and
read by content (k_t chooses where x_t goes, q_t what is read back) and erased by a
per-token, per-key decay: selection with enough state to recall.

Fitted to the mixer interface (B, T, D) -> (B, T, S, D) as the ``attention`` mixer is:
the values are the inputs themselves, shared by the heads, and there is no output
projection, because what reads y downstream (SPEN's predictor and context mix) is
linear in it, so W_v and W_o would be absorbed there. The RMS normalisation has no
gain for the same reason. beta^(s) starts at logit((1 - alpha_s)^tau) with W_g near
zero, so head s starts with the decay 1 - alpha_s of the s-th EMA timescale.

State: S (B, S, E, D) in float32, ``state_size`` = S E D floats per sequence (E times
the S x D of ``ema``, ``learned_ema`` and ``selective``). A one-token call takes the
step path, ``emaprobe.ops.gla_step``; longer ones ``gated_linear_attention``.
``decay_logit`` (beta) and ``gate_bias`` (beta_r) are marked so that AdamW leaves them
undecayed (``emaprobe.layers.no_weight_decay``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emaprobe.layers.base import ContextMixer, check_alphas, no_weight_decay, register_mixer
from emaprobe.ops import DEFAULT_ALPHAS, available_backends, available_gla_backends, gated_linear_attention, gla_step


@register_mixer("gla")
class GLAMixer(ContextMixer):
    """S gated-linear-attention heads over the inputs; y (B, T, S, D) in x's dtype."""

    def __init__(
        self,
        d_model: int,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        key_dim: int = 64,
        rank: int = 16,
        tau: float = 16.0,
        backend: str = "auto",
        norm_eps: float = 1e-5,
    ):
        vals = check_alphas(alphas)
        super().__init__(d_model, len(vals))
        if int(key_dim) <= 0:
            raise ValueError(f"key_dim must be positive, got {key_dim}")
        if int(rank) < 0:
            raise ValueError(f"rank must be >= 0 (0 = full rank), got {rank}")
        if not (math.isfinite(float(tau)) and float(tau) > 0):
            raise ValueError(f"tau must be a positive number, got {tau}")
        if backend not in available_gla_backends():
            if backend not in available_backends():
                raise ValueError(f"unknown backend {backend!r}; choose one of {available_gla_backends()}")
            # a scan-only backend (e.g. 'triton', shared by a model's scan mixers) says nothing about GLA
            backend = "auto"
        self.init_alphas = vals
        self.key_dim = int(key_dim)
        self.rank = int(rank)
        self.tau = float(tau)
        self.backend = backend
        self.norm_eps = float(norm_eps)
        S, E, D = len(vals), self.key_dim, d_model
        self.qk = nn.Linear(D, 2 * S * E, bias=False)
        n_gate = S * E + S * D  # decay gate (S, E) and output gate (S, D)
        if self.rank:
            self.gate_down = nn.Linear(D, self.rank, bias=False)
            self.gate_up = nn.Linear(self.rank, n_gate, bias=False)
        else:
            self.gate_proj = nn.Linear(D, n_gate, bias=False)
        self.decay_logit = no_weight_decay(nn.Parameter(torch.empty(S, E)))  # beta
        self.gate_bias = no_weight_decay(nn.Parameter(torch.empty(S, D)))  # beta_r
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for s, a in enumerate(self.init_alphas):
                keep = (1.0 - a) ** self.tau  # sigmoid(beta)^(1/tau) = 1 - alpha_s
                self.decay_logit[s].fill_(math.log(keep / (1.0 - keep)))
            self.gate_bias.zero_()
            for lin in (self.qk, self.gate_down, self.gate_up) if self.rank else (self.qk, self.gate_proj):
                nn.init.normal_(lin.weight, std=0.02)

    @property
    def state_size(self) -> int:
        """Floats of state carried per sequence: S heads x E keys x D values."""
        return self.n_scales * self.key_dim * self.d_model

    def log_decays(self, x: torch.Tensor) -> torch.Tensor:
        """g (B, T, S, E) <= 0, float32, for x (B, T, D)."""
        return self._gates(x)[0]

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        S, E, D = self.n_scales, self.key_dim, self.d_model
        z = self.gate_up(self.gate_down(x)) if self.rank else self.gate_proj(x)
        # at least float32: in bf16 a decay of 0.98 is off by up to 20% in its timescale
        acc = torch.promote_types(z.dtype, torch.float32)
        z_g, z_r = z.to(acc).split([S * E, S * D], dim=-1)
        g = F.logsigmoid(z_g.view(B, T, S, E) + self.decay_logit.to(acc)) / self.tau  # (B, T, S, E)
        r = torch.sigmoid(z_r.view(B, T, S, D) + self.gate_bias.to(acc))  # (B, T, S, D)
        return g, r

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        self.check_input(x)
        B, T, D = x.shape
        S, E = self.n_scales, self.key_dim
        if state is not None and (not isinstance(state, torch.Tensor) or tuple(state.shape) != (B, S, E, D)):
            raise ValueError(f"GLAMixer: state must be the (B, S, E, D) = {(B, S, E, D)} tensor it returned, "
                             f"got {getattr(state, 'shape', type(state).__name__)}")
        q, k = self.qk(x).view(B, T, 2, S, E).unbind(2)  # each (B, T, S, E)
        q = q * E**-0.5
        g, r = self._gates(x)  # (B, T, S, E), (B, T, S, D)
        v = x.unsqueeze(2).expand(B, T, S, D)  # the inputs are the values, shared by the heads
        if T == 1:
            o, h = gla_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], state)  # (B, S, D), (B, S, E, D)
            o = o.unsqueeze(1)
        else:
            o, h = gated_linear_attention(q, k, v, g, h0=state, return_state=True, backend=self.backend)
        o = o.to(r.dtype)  # (B, T, S, D), at least float32
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.norm_eps)  # RMS per head
        return (o * r).to(x.dtype), h

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, heads S={self.n_scales}, key_dim={self.key_dim}, "
                f"rank={self.rank or 'full'}, tau={self.tau}, state={self.state_size} floats")
