"""Lag-k identity data: i.i.d. uniform token streams and the (read position, lag) targets.

    tokens = lag_tokens(n_seq=64, seq_len=600, vocab=64, seed=0)        # (N, T) int64
    t, y = lag_targets(tokens, lag=8, positions=read_positions(600, 512, 16))
    # y[n, i] = tokens[n, t[i] - 8]: the token a probe reading the state at t must name

Tokens are i.i.d. uniform over V, so the entropy of the target is exactly
H(x) = log2 V bits and nothing about x_{t-k} can be guessed from its neighbours:
whatever a probe recovers came through the state. Random embeddings (``random_embeddings``)
are N(0, I/D) rows, the codebook of the analytic curve (``emaprobe.probes.analytic``).

Deterministic: the same arguments give the same tensors (a local ``torch.Generator``).
"""

from __future__ import annotations

import math

import torch


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def lag_tokens(n_seq: int, seq_len: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """(n_seq, seq_len) int64 tokens, i.i.d. uniform over ``vocab``."""
    for name, v in (("n_seq", n_seq), ("seq_len", seq_len)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if int(vocab) < 2:
        raise ValueError(f"vocab must be >= 2 (a target needs at least 2 values), got {vocab}")
    return torch.randint(0, int(vocab), (int(n_seq), int(seq_len)), generator=_gen(seed))


def random_embeddings(vocab: int, d_model: int, seed: int = 0) -> torch.Tensor:
    """(V, D) float32 codebook, entries N(0, 1/D): each row has squared norm about 1."""
    if int(vocab) < 1 or int(d_model) < 1:
        raise ValueError(f"vocab and d_model must be positive, got {vocab}, {d_model}")
    return torch.randn(int(vocab), int(d_model), generator=_gen(seed)) / math.sqrt(int(d_model))


def read_positions(seq_len: int, max_lag: int, n_read: int) -> torch.Tensor:
    """``n_read`` read positions t, the last ones of the sequence, each with t - max_lag >= 0.

    Reading several late positions per sequence gives more probe samples per scan; they
    are the last ``n_read`` positions so that every read sits past the same burn-in.
    """
    if n_read < 1:
        raise ValueError(f"n_read must be >= 1, got {n_read}")
    if seq_len - n_read < max_lag:
        raise ValueError(
            f"seq_len={seq_len} is too short: reads at the last {n_read} positions need t - max_lag >= 0 "
            f"for max_lag={max_lag}; use seq_len >= {max_lag + n_read}"
        )
    return torch.arange(seq_len - n_read, seq_len)


def lag_targets(tokens: torch.Tensor, lag: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, y (N, P)) with y[n, i] = tokens[n, positions[i] - lag]."""
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (N, T), got {tuple(tokens.shape)}")
    if lag < 0:
        raise ValueError(f"lag must be >= 0, got {lag}")
    if int(positions.min()) - lag < 0 or int(positions.max()) >= tokens.shape[1]:
        raise ValueError(f"positions {int(positions.min())}..{int(positions.max())} with lag {lag} fall outside "
                         f"a sequence of length {tokens.shape[1]}")
    return positions, tokens[:, positions - lag]


def default_lags(max_lag: int = 512) -> tuple[int, ...]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... up to ``max_lag``: powers of two and their 1.5x midpoints."""
    lags, p = {1}, 1
    while p <= max_lag:
        lags.add(p)
        if p * 3 // 2 <= max_lag and p >= 2:
            lags.add(p * 3 // 2)
        p *= 2
    return tuple(sorted(x for x in lags if x <= max_lag))


__all__ = ["default_lags", "lag_targets", "lag_tokens", "random_embeddings", "read_positions"]
