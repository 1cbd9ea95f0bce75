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

    def forward(self, x: torch.Tensor, state: dict | None = None, return_parts: bool = False):
        """x (B, T, D) -> (x + y (B, T, D), state); with ``return_parts`` also a dict of
        u, H, x_hat, e, c, y (the glossary's symbols)."""
        state = state or {}
        u = self.norm(x)  # (B, T, D)
        H, mix_state = self.mixer(_in_autocast_dtype(u), state.get("mixer"))  # (B, T, S, D)
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

