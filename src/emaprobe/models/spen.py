"""SPEN: the paper's language model whose only temporal context is a context mixer
(by default fixed multi-timescale EMA traces).

Symbols:
    B      batch size
    T      sequence length
    D      model width (``d_model``)
    S      number of context vectors per position (timescales; ``len(alphas)``)
    V      vocabulary size
    d_b    width of the context-mix bottleneck (``d_bottleneck``)
    d_ff   width of the sparse FFN
    k      FFN units active per token, ceil(0.06 d_ff) by default
    u_t    the normalised block input, RMSNorm(x_t)                      (B, T, D)
    H_t    the context after token t, mixer(u)_t                          (B, T, S, D)
    x̂_t    prediction of u_t from past context, P(H_{t-1})                (B, T, D)
    e_t    prediction error u_t - x̂_t                                     (B, T, D)
    c_t    bottleneck context code M [e_t ; H_t]                          (B, T, d_b)

One block, in order (Figure 1 of arXiv 2604.08556; DESIGN.md "SPEN language model"):

    u   = RMSNorm(x)
    H   = mixer(u)                       ema (default), learned_ema, selective, gla or attention
    x̂_t = P(H_{t-1})                     linear (default) or attention over H_{<t}
    e_t = u_t - x̂_t
    c_t = M [e_t ; H_t]                  M: (S+1) D -> d_b, the bottleneck
    y_t = W2 topk(act(W1 c_t))           W1: d_b -> d_ff, k of d_ff units kept
    x   = x + y

Where the mixer is a fixed recurrence (the EMA) and the predictor the linear one, a call over
enough positions computes c without x̂ and e: the recurrence gives H_{t-1} from H_t and u_t,
so P folds into M (``SPENBlock._fold_and_mix``), the same c in exact arithmetic with the
predictor's products gone. ``return_parts`` and one-token steps take the path above.

There is no positional encoding (the traces carry order) and the output head is the
token embedding, transposed. ``SPENConfig`` names the mixer and the predictor, so
every context mechanism runs in the same block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emaprobe.layers import ACTIVATIONS, MIXERS, PREDICTORS, SparseFFN, active_units, build_mixer, build_predictor
from emaprobe.layers import check_alphas
from emaprobe.models.common import LanguageModel, RMSNorm, check_sizes, init_weights, register_model
from emaprobe.ops import DEFAULT_ALPHAS, available_backends, check_ffn_impl


@dataclass(frozen=True)
class SPENConfig:
    """A SPEN model. Defaults are ``spen-130m`` (D = 768, 12 blocks, GPT-2 vocabulary)."""

    vocab_size: int = 50257  # V
    d_model: int = 768  # D
    n_layer: int = 12
    d_bottleneck: int = 576  # d_b
    d_ff: int = 3072
    ffn_active: float = 0.06  # k = ceil(ffn_active * d_ff)
    ffn_act: str = "relu"
    ffn_impl: str = "auto"  # top-k code and down projection: "dense", "gather", "mask" or "auto" (by device)
    alphas: tuple[float, ...] = DEFAULT_ALPHAS  # S timescales (initial ones for learned mixers)
    mixer: str = "ema"
    predictor: str = "linear"
    n_head: int = 12  # heads of the attention predictor
    key_dim: int = 64  # query/key width per head of the attention and gla mixers (gla's state: S x key_dim x D)
    mixer_rank: int = 64  # rank of the selective and gla mixers' gate projections; 0 = full
    dropout: float = 0.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    scan_backend: str = "auto"  # emaprobe.ops backend of the scan mixers

    def __post_init__(self):
        check_sizes(self, ("vocab_size", "d_model", "n_layer", "d_bottleneck", "d_ff", "n_head", "key_dim"))
        if self.scan_backend not in available_backends():
            raise ValueError(f"SPENConfig.scan_backend: unknown scan backend {self.scan_backend!r}; "
                             f"choose one of {available_backends()}")
        if self.mixer not in MIXERS:
            raise ValueError(f"SPENConfig.mixer: unknown mixer {self.mixer!r}; choose one of {sorted(MIXERS)}")
        if self.predictor not in PREDICTORS:
            raise ValueError(
                f"SPENConfig.predictor: unknown predictor {self.predictor!r}; choose one of {sorted(PREDICTORS)}"
            )
        if self.ffn_act not in ACTIVATIONS:
            raise ValueError(f"SPENConfig.ffn_act: unknown activation {self.ffn_act!r}; choose one of {sorted(ACTIVATIONS)}")
        try:
            check_ffn_impl(self.ffn_impl, self.ffn_act)
        except ValueError as err:
            raise ValueError(f"SPENConfig.ffn_impl: {err}") from err
        if not 0.0 < self.ffn_active <= 1.0:
            raise ValueError(f"SPENConfig.ffn_active must lie in (0, 1], got {self.ffn_active}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SPENConfig.dropout must lie in [0, 1), got {self.dropout}")
        if self.mixer_rank < 0:
            raise ValueError(f"SPENConfig.mixer_rank must be >= 0 (0 = full rank), got {self.mixer_rank}")
        if self.predictor == "attention" and self.d_model % self.n_head:
            raise ValueError(f"SPENConfig: d_model={self.d_model} is not divisible by n_head={self.n_head}")
        try:
            check_alphas(self.alphas)
        except ValueError as err:
            raise ValueError(f"SPENConfig.alphas: {err}") from err

    @property
    def n_scales(self) -> int:
        return len(self.alphas)

    @property
    def k_active(self) -> int:
        return active_units(self.ffn_active, self.d_ff)


class SPENBlock(nn.Module):
    """One SPEN block. State: {"mixer": the mixer's state, "h_last": H_{T-1} (B, S, D),
    "pred": the predictor's state}."""

    def __init__(self, cfg: SPENConfig):
        super().__init__()
        D, S = cfg.d_model, cfg.n_scales
        self.norm = RMSNorm(D, cfg.norm_eps)
        self.mixer = build_mixer(
            cfg.mixer, D, strict=False, alphas=cfg.alphas, backend=cfg.scan_backend, rank=cfg.mixer_rank,
            key_dim=cfg.key_dim,
        )
        self.predictor = build_predictor(cfg.predictor, D, S, n_head=cfg.n_head, dropout=cfg.dropout)
        if self.predictor.in_proj.bias is not None:  # _predict_and_mix stacks in_proj's weight alone
            raise ValueError(f"SPEN: predictor {cfg.predictor!r} has a bias in in_proj; SPEN takes predictors without one")
        self.mix = nn.Linear((S + 1) * D, cfg.d_bottleneck, bias=False)  # M
        self.ffn = SparseFFN(cfg.d_bottleneck, cfg.d_ff, D, cfg.k_active, cfg.ffn_act, cfg.ffn_impl)
        self.drop = nn.Dropout(cfg.dropout)
        # the folded product (``_fold_and_mix``): (1 / a_s, b_s / a_s) of the mixer's fixed recurrence as
        # Python floats (exact whatever dtype the module is cast to), or None where the block cannot fold:
        # not a fixed recurrence, a predictor that is not a shifted product, or a decay under FOLD_MIN_DECAY
        self.fold: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        rec = self.mixer.fixed_recurrence()
        if rec is not None and self.predictor.shift_only and min(rec[0]) >= FOLD_MIN_DECAY:
            self.fold = tuple(1.0 / a for a in rec[0]), tuple(b / a for a, b in zip(*rec))

    def forward(self, x: torch.Tensor, state: dict | None = None, return_parts: bool = False):
        """x (B, T, D) -> (x + y (B, T, D), state); with ``return_parts`` also a dict of
        u, H, x_hat, e, c, y (the glossary's symbols)."""
        state = state or {}
        u = self.norm(x)  # (B, T, D)
        x_in = _in_autocast_dtype(u)  # the mixer's input
        if not return_parts and self.folds(u.shape[0] * u.shape[1]):
            Hx, mix_state = self.mixer.traces_and_input(x_in, state.get("mixer"))  # (B, T, S + 1, D)
            H = Hx[:, :, :-1]
            c, pred_state = self._fold_and_mix(Hx), None
        else:
            H, mix_state = self.mixer(x_in, state.get("mixer"))  # (B, T, S, D)
            x_hat, e, c, pred_state = self._predict_and_mix(u, H, state.get("h_last"), state.get("pred"))
        y = self.ffn(c)  # (B, T, D)
        out = x + self.drop(y)
        new_state = {"mixer": mix_state, "h_last": H[:, -1].clone(), "pred": pred_state}
        if return_parts:
            return out, new_state, {"u": u, "H": H, "x_hat": x_hat, "e": e, "c": c, "y": y}
        return out, new_state

    def _predict_and_mix(self, u: torch.Tensor, H: torch.Tensor, h_last: torch.Tensor | None, pred_state):
        """(x̂, e, c, predictor state): x̂ = P(H_{<t}), e = u - x̂ and c = M [e; vec(H)].

        Both P and M read vec(H), the block's widest activation (S D a token). Their H-facing
        weights, the predictor's ``in_proj`` (F, S D) and M's H columns (d_b, S D), are stacked
        into one product, so H is read once forward and once for the weight gradients, and its
        gradient comes out of one product instead of two that a third kernel sums. M is applied
        as e M_e^T + vec(H) M_H^T, without the (B, T, (S+1) D) concatenation.
        """
        D = u.shape[-1]
        W_P, W = self.predictor.in_proj.weight, self.mix.weight  # (F, S D); (d_b, (S+1) D), [0, D) acts on e
        zc = F.linear(H.flatten(2), torch.cat([W_P, W[:, D:]]))  # (B, T, F + d_b)
        z, c_H = zc.split([W_P.shape[0], W.shape[0]], dim=-1)
        x_hat, pred_state = self.predictor.finish(z, self.predictor.project_last(h_last, H.dtype), pred_state)
        e = u - x_hat  # (B, T, D)
        c = torch.addmm(c_H.flatten(0, 1), e.to(H.dtype).flatten(0, 1), W[:, :D].t()).view_as(c_H)
        return x_hat, e, c, pred_state

    def folds(self, n_tokens: int) -> bool:
        """Whether a call over ``n_tokens`` (B T) positions computes c by ``_fold_and_mix``: where the
        block can fold and the call has at least FOLD_MIN_TOKENS_PER_BOTTLENECK x d_b positions."""
        return self.fold is not None and n_tokens >= FOLD_MIN_TOKENS_PER_BOTTLENECK * self.mix.out_features

    def _fold_and_mix(self, Hx: torch.Tensor) -> torch.Tensor:
        """c = M [e; vec(H)], the value ``_predict_and_mix`` gives, in one product with no x̂ and no shift.

        The mixer's traces follow H_t^(s) = a_s H_{t-1}^(s) + b_s x_t with fixed a, b (the EMA:
        a = 1 - alpha, b = alpha), so H_{t-1}^(s) = (H_t^(s) - b_s x_t) / a_s, at every t including
        the first (H_{-1} is the state the mixer started from, which is what h_last holds). With
        x̂_t = W_P vec(H_{t-1}), e = u - x̂ and G = M_e W_P split by timescale into G_s (d_b, D):

            c_t = M_e u_t - M_e W_P vec(H_{t-1}) + M_H vec(H_t)
                = (M_H - [G_s / a_s]_s) vec(H_t) + (M_e + sum_s G_s b_s / a_s) u_t

        ``Hx`` (B, T, S + 1, D) is the mixer's ``traces_and_input``: H_t with u_t (the mixer's input,
        in the products' dtype) as slot S, so c is one product over [vec(H_t); u_t] with the two
        folded weights side by side, and no second product adds into the first (``torch.addmm``
        copies its addend into a new output before the product). Per token that is S D d_b + D d_b
        multiply-adds against S D (D + d_b) + D d_b: the predictor's S D^2 goes, forward and in both
        backward products, for one d_b x D x S D product over the weights a call. Gradients reach
        W_P and M through G. The same c in exact arithmetic; in bf16 the rounding of H_t is scaled
        by up to 1 / a_s, which FOLD_MIN_DECAY bounds at 2.
        """
        D = Hx.shape[-1]
        W_P, W = self.predictor.in_proj.weight, self.mix.weight  # (D, S D); (d_b, (S+1) D), [0, D) acts on e
        M_e, M_H = W[:, :D], W[:, D:]
        inv, gain = self.fold
        G = (M_e @ W_P).unflatten(1, (len(inv), D))  # (d_b, S, D)
        W_H = [M_H[:, s * D:(s + 1) * D] - G[:, s] * inv[s] for s in range(len(inv))]  # each acts on H_t^(s)
        W_u = M_e + sum(G[:, s] * gain[s] for s in range(len(gain)))  # acts on u_t
        return F.linear(Hx.flatten(2), torch.cat(W_H + [W_u], dim=1))  # (B, T, d_b)


# The folded product (``SPENBlock._fold_and_mix``) runs where every decay a_s >= FOLD_MIN_DECAY (its
# 1 / a_s scales H's rounding by at most 2; the EMA's alpha <= 0.5, as at the paper's 0.5, 0.1, 0.02),
# and a call has at least FOLD_MIN_TOKENS_PER_BOTTLENECK x d_b positions: the product over the weights
# costs d_b tokens' worth of the predictor's products, so this keeps it under a quarter of what the fold
# saves, and a one-token decoding step keeps the two products over vec(H)
FOLD_MIN_DECAY = 0.5
FOLD_MIN_TOKENS_PER_BOTTLENECK = 4


def _in_autocast_dtype(t: torch.Tensor) -> torch.Tensor:
    """t cast to the autocast dtype when autocast is on for its device; t itself otherwise.

    The mixer's input. The scans keep their state in float32 inside the kernel and write H in
    their input's dtype, so a bf16 u gives a bf16 H (B, T, S, D) directly. With the float32 u
    that RMSNorm returns, H came out in float32 and autocast cast it to bf16 twice more, once
    before P and once before M, each a read of 4 S and a write of 2 S bytes per token-channel
    (and their float32 gradients on the way back). Casting u costs 4 + 2 bytes, once. Without
    autocast this is the identity: float32 results are unchanged.
    """
    dev = t.device.type
    if torch.is_autocast_enabled(dev):
        return t.to(torch.get_autocast_dtype(dev))
    return t


@register_model
class SPEN(LanguageModel):
    """The SPEN language model: ``model(idx (B, T), state=None) -> (logits (B, T, V), state)``."""

    kind = "spen"
    config_class = SPENConfig

    def __init__(self, config: SPENConfig):
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(SPENBlock(config) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        # linears and embeddings only: the mixers' decay parameters keep their own init
        init_weights(self, config.init_std, config.n_layer)

    def hidden(self, idx: torch.Tensor, state: list | None = None):
        self.check_idx(idx)
        states = self.check_state(state, len(self.blocks))
        x = self.drop(self.tok_emb(idx))  # (B, T, D)
        new_states = []
        for blk, st in zip(self.blocks, states):
            x, st = blk(x, st)
            new_states.append(st)
        return self.norm_f(x), new_states

    @property
    def static_state(self) -> bool:
        """A scan mixer's state is (B, S, D) or (B, S, E, D) whatever the length; attention's KV cache grows."""
        return self.config.mixer != "attention" and self.config.predictor != "attention"

    @torch.no_grad()
    def block_parts(self, idx: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Every block's intermediates (u, H, x_hat, e, c, y) for ``idx`` (B, T): what
        probes read, e.g. the context H (B, T, S, D) of each block."""
        self.check_idx(idx)
        x = self.tok_emb(idx)
        parts = []
        for blk in self.blocks:
            x, _, p = blk(x, None, return_parts=True)
            parts.append(p)
        return parts

    def extra_repr(self) -> str:
        c = self.config
        return f"mixer={c.mixer}, predictor={c.predictor}, k={c.k_active}/{c.d_ff}, params={self.num_params():,}"

