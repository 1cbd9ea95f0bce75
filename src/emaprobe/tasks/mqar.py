"""MQAR, multi-query associative recall (Zoology, Arora et al. 2023, arXiv 2312.04927).

A sequence of T tokens: N key-value pairs ``k1 v1 k2 v2 ... kN vN``, then a query
region in which every key comes back once, at a random position, among filler
tokens (0). At a query position the model must output the value bound to that key;
every other position is unscored (label -100).

    batch = mqar_batch(MQARConfig(vocab=512, seq_len=128, n_pairs=16), n=64, seed=0)
    batch.tokens (N, T) int64, batch.labels (N, T) int64 (-100 except at queries)

Vocabulary layout, as Zoology's: 0 is the filler, keys are drawn without
replacement from [1, V/2), values with replacement from [V/2, V), so a key and a
value are never the same token. Queries are placed in the query region uniformly at
random without two on one position (Zoology draws the gaps from a power law; the
uniform placement is our choice, recorded in every result). The answer is
recoverable by construction: ``answer_by_lookup`` reads it back from the tokens.
Deterministic: the same config, n, seed and device give the same batch (a CUDA
generator draws other numbers than the CPU one, so the batches differ by device).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100
FILLER = 0


@dataclass(frozen=True)
class MQARConfig:
    vocab: int = 512  # V
    seq_len: int = 128  # T
    n_pairs: int = 16  # N

    def __post_init__(self):
        if self.vocab < 8 or self.vocab % 2:
            raise ValueError(f"MQAR vocab must be even and >= 8, got {self.vocab}")
        if self.n_pairs < 1:
            raise ValueError(f"n_pairs must be >= 1, got {self.n_pairs}")
        if self.n_pairs > self.vocab // 2 - 1:
            raise ValueError(f"n_pairs={self.n_pairs} needs {self.n_pairs} distinct keys, but the key range "
                             f"[1, {self.vocab // 2}) holds {self.vocab // 2 - 1}; raise vocab")
        if self.seq_len < 3 * self.n_pairs:
            raise ValueError(f"seq_len={self.seq_len} cannot hold {self.n_pairs} pairs and their queries: "
                             f"need seq_len >= 3 * n_pairs = {3 * self.n_pairs}")


@dataclass(frozen=True)
class MQARBatch:
    tokens: torch.Tensor  # (N, T) int64
    labels: torch.Tensor  # (N, T) int64, IGNORE except at query positions

    def to(self, device) -> MQARBatch:
        return MQARBatch(self.tokens.to(device), self.labels.to(device))


def mqar_batch(cfg: MQARConfig, n: int, seed: int, device: torch.device | str = "cpu") -> MQARBatch:
    """``n`` MQAR sequences of ``cfg`` drawn from ``seed``, made on ``device`` (on a GPU the
    sort that draws distinct keys would otherwise cost more than a small model's step)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    device = torch.device(device)
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    V, T, N = cfg.vocab, cfg.seq_len, cfg.n_pairs
    half = V // 2
    keys = torch.argsort(torch.rand(n, half - 1, generator=g, device=device), dim=1)[:, :N] + 1  # (n, N) distinct
    values = torch.randint(half, V, (n, N), generator=g, device=device)  # (n, N)
    tokens = torch.full((n, T), FILLER, dtype=torch.long, device=device)
    labels = torch.full((n, T), IGNORE, dtype=torch.long, device=device)
    tokens[:, 0 : 2 * N : 2] = keys
    tokens[:, 1 : 2 * N : 2] = values
    # each key queried once, at distinct random positions of the query region [2N, T)
    region = T - 2 * N
    slots = torch.argsort(torch.rand(n, region, generator=g, device=device), dim=1)[:, :N] + 2 * N  # (n, N)
    order = torch.argsort(torch.rand(n, N, generator=g, device=device), dim=1)  # which key goes to which slot
    q_keys = torch.gather(keys, 1, order)
    q_vals = torch.gather(values, 1, order)
    tokens.scatter_(1, slots, q_keys)
    labels.scatter_(1, slots, q_vals)
    return MQARBatch(tokens, labels)


def answer_by_lookup(tokens: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """The labels an exact key-value lookup gives: (N, T), IGNORE off the queries.

    A reference solver: it proves every query's answer sits in the context.
    """
    out = torch.full_like(tokens, IGNORE)
    for i in range(tokens.shape[0]):
        table = {int(tokens[i, 2 * j]): int(tokens[i, 2 * j + 1]) for j in range(n_pairs)}
        for t in range(2 * n_pairs, tokens.shape[1]):
            key = int(tokens[i, t])
            if key != FILLER:
                out[i, t] = table[key]
    return out


__all__ = ["FILLER", "IGNORE", "MQARBatch", "MQARConfig", "answer_by_lookup", "mqar_batch"]
