"""Deterministic random-window batches, a different stream on every DDP rank.

Each rank owns a ``torch.Generator`` seeded from (seed, rank) through numpy's
``SeedSequence``, so the ranks draw independent, reproducible streams, and a
checkpoint resumes each one exactly from its saved generator state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from emaprobe.data.tokens import get_batch


def rank_seed(seed: int, rank: int) -> int:
    """A 63-bit seed mixed from the run seed and the rank."""
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


class BatchSampler:
    """Draws ``(x, y)`` int64 windows of shape (B, T) from a 1-D token stream.

    ``y`` is ``x`` shifted by one token; windows come from ``emaprobe.data.get_batch``.
    """

    def __init__(self, tokens: Any, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0) -> None:
        n = len(tokens)
        if n < seq_len + 2:
            raise ValueError(f"the training split has {n} tokens; it needs more than seq_len + 1 = {seq_len + 1}")
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.generator = torch.Generator().manual_seed(rank_seed(seed, rank))

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        return get_batch(self.tokens, self.batch_size, self.seq_len, self.generator)  # (B, T) each

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
