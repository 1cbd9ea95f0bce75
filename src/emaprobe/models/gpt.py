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

Learned absolute positions, tied input/output embeddings.

State: a preallocated KV cache (the idea is gpt-fast's, pytorch-labs/gpt-fast), one
``(k (B, nh, L, hd), v (B, nh, L, hd), n)`` per block: L slots of which the first n
are filled, n a 0-dim long tensor on the model's device (None: all L filled).

    model(idx)            the training path, is_causal attention over T positions;
                          the state is each block's (k, v, None), L = T, no copy
    model(idx, state)     continues: buffers smaller than block_size are moved once
                          into block_size ones, then the new keys and values are
                          written in place at n..n+T-1 and n becomes n + T

``generate`` reads the prompt, then steps one token at a time over block_size
buffers, so every step has the same shapes and ``generate(compile=True)`` replays
one compiled graph (``static_state``). A state is consumed by continuing from it:
its first n slots stay as they were, but the slots after are overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emaprobe.layers import fixed_kv_attention, reserve_kv_cache
from emaprobe.models.common import ContextLimitError, LanguageModel, check_sizes, init_weights, register_model


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
        check_sizes(self, ("vocab_size", "block_size", "d_model", "n_layer", "n_head", "d_ff"))
        if self.d_model % self.n_head:
            raise ValueError(f"GPTConfig: d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must lie in [0, 1), got {self.dropout}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.dropout, self.block_size = cfg.n_head, cfg.dropout, cfg.block_size
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.proj.residual_out = True

    def forward(self, x: torch.Tensor, cache=None):
        B, T, D = x.shape
        nh = self.n_head
        q, k, v = self.qkv(x).view(B, T, 3, nh, D // nh).permute(2, 0, 3, 1, 4)  # each (B, nh, T, hd)
        p = self.dropout if self.training else 0.0
        y, cache = fixed_kv_attention(q, k, v, cache, self.block_size, dropout_p=p)  # (B, nh, T, hd)
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

    def hidden(self, idx: torch.Tensor, state: list | None = None):
        self.check_idx(idx)
        caches = self.check_state(state, len(self.blocks))
        T = idx.shape[1]
        past, start = 0, 0  # start: the first new position, an int or a 0-dim tensor
        if state is not None:
            if not all(isinstance(c, (tuple, list)) and len(c) == 3 for c in caches):
                raise ValueError("GPT: each block's state must be the (k, v, n) KV cache this model returned")
            k0, _, n = caches[0]
            if n is None:
                past = start = k0.shape[2]
            else:
                start = n
                # an eager call reads n back (one sync, so a bad call is a named error on any device);
                # a compiled step does not, and generate() checks the limit before it starts
                past = 0 if torch.compiler.is_compiling() else int(n)
        if past + T > self.config.block_size:
            raise ContextLimitError(
                f"GPT: {past} cached + {T} new positions exceed block_size={self.config.block_size}"
            )
        if isinstance(start, int):
            pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        else:  # a tensor n: no read back, so a compiled step is one graph for every n
            pos = start + torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, D)
        new = []
        for blk, cache in zip(self.blocks, caches):
            x, cache = blk(x, cache)
            new.append(cache)
        return self.ln_f(x), new

    @property
    def static_state(self) -> bool:
        """After the prompt, every block's cache is block_size slots and a 0-dim n: fixed shapes."""
        return True

    def _prefill(self, idx: torch.Tensor):
        # a one-chunk prompt leaves (k, v, None) of T slots: reserve block_size now, so that
        # the first decode step already has the shapes of every later one
        logits, state = super()._prefill(idx)
        return logits, [reserve_kv_cache(c, self.config.block_size) for c in state]

    @property
    def context_limit(self) -> int:
        """Learned positions end at ``block_size``: generation stops there rather than re-reading
        a slid window per token (see ``LanguageModel.generate``)."""
        return self.config.block_size

    def extra_repr(self) -> str:
        return f"params={self.num_params():,}"
