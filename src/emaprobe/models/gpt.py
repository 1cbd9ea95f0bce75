"""GPT: the transformer baseline (GPT-2 layout, after nanoGPT), sized to match SPEN.

Symbols:
    B      batch size
    T      sequence length (T + cached positions <= block_size)
    D      model width (``d_model``)
    V      vocabulary size
    nh     attention heads; hd = D / nh per head
    d_ff   MLP width (4 D by default)

One block, pre-norm:

    x = x + W_o Attn(LN(x))          causal scaled_dot_product_attention
    x = x + W_2 gelu(W_1 LN(x))

Learned absolute positions, tied input/output embeddings. The state is the KV
cache, one ``(k (B, nh, P, hd), v (B, nh, P, hd))`` per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emaprobe.layers import cached_attention
from emaprobe.models.common import ContextLimitError, LanguageModel, init_weights, register_model


@dataclass(frozen=True)
class GPTConfig:
    """A GPT model. Defaults are GPT-2 small (``gpt-124m``, 124M parameters)."""

    vocab_size: int = 50257  # V
    block_size: int = 1024  # longest sequence (learned positions)
    d_model: int = 768  # D
    n_layer: int = 12
    n_head: int = 12
    d_ff: int = 3072
    dropout: float = 0.0
    bias: bool = True
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "d_model", "n_layer", "n_head", "d_ff"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"GPTConfig: d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must lie in [0, 1), got {self.dropout}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.proj.residual_out = True

    def forward(self, x: torch.Tensor, cache=None):
        B, T, D = x.shape
        nh = self.n_head
        q, k, v = self.qkv(x).view(B, T, 3, nh, D // nh).permute(2, 0, 3, 1, 4)  # each (B, nh, T, hd)
        p = self.dropout if self.training else 0.0
        y, cache = cached_attention(q, k, v, cache, dropout_p=p)  # (B, nh, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, D)), cache


class GPTBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.fc_out.residual_out = True
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache=None):
        a, cache = self.attn(self.ln1(x), cache)
        x = x + self.drop(a)
        x = x + self.drop(self.fc_out(F.gelu(self.fc(self.ln2(x)))))
        return x, cache


@register_model
class GPT(LanguageModel):
    """The GPT baseline: ``model(idx (B, T), state=None) -> (logits (B, T, V), state)``."""

    kind = "gpt"
    config_class = GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.block_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(GPTBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)
        init_weights(self, config.init_std, config.n_layer)

    def forward(self, idx: torch.Tensor, state: list | None = None):
        self.check_idx(idx)
        caches = self.check_state(state, len(self.blocks))
        T = idx.shape[1]
        past = 0 if caches[0] is None else caches[0][0].shape[2]
        if past + T > self.config.block_size:
            raise ContextLimitError(
                f"GPT: {past} cached + {T} new positions exceed block_size={self.config.block_size}"
            )
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, D)
        new = []
        for blk, cache in zip(self.blocks, caches):
            x, cache = blk(x, cache)
            new.append(cache)
        logits = F.linear(self.ln_f(x), self.tok_emb.weight)  # (B, T, V), tied head
        return logits, new

    @property
    def context_limit(self) -> int:
        """Learned positions end at ``block_size``: generation stops there rather than re-reading
        a slid window per token (see ``LanguageModel.generate``)."""
        return self.config.block_size

    def extra_repr(self) -> str:
        return f"params={self.num_params():,}"
