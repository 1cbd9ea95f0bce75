"""BiGRU role tagger: the supervised reference of the structure claim.

"EMA Is Not All You Need" (arXiv 2604.08556) compares its label-free Hebbian learner
with "a supervised BiGRU" on grammatical role assignment; the paper gives nothing
more, so this tagger is this project's (DESIGN.md, "Grammatical role assignment"):
the same fixed random embeddings as the Hebbian learner (frozen), a bidirectional
GRU and a linear read-out to the three roles. Its training loop (cross-entropy on the
scored tokens, Adam, early stopping on validation) is ``emaprobe.train.tagger``.

Symbols
    B  sentences in a batch     T  tokens (right-padded)     D  embedding width
    H  GRU hidden width per direction                        R  = 3 roles
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from emaprobe.models.hebbian import FixedEmbeddings
from emaprobe.tasks.sentence import NO_ROLE, ROLES, RoleSentence

IGNORE = -100


@dataclass(frozen=True)
class BiGRUConfig:
    """The tagger's shape and initial weights; saved with every result.

    dim: embedding width D (the embeddings are fixed and shared with the Hebbian learner).
    hidden: H per direction.  layers: stacked GRU layers.
    seed: initial weights, drawn from a private ``torch.Generator`` (the global RNG is untouched).
    """

    dim: int = 64
    hidden: int = 64
    layers: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"BiGRUConfig.{name} must be >= 1, got {getattr(self, name)}")


def role_ids(sentences: Sequence[RoleSentence], T: int) -> torch.Tensor:
    """(B, T) role index per token, ``IGNORE`` where the token is not scored or is padding."""
    y = torch.full((len(sentences), T), IGNORE, dtype=torch.long)
    for i, s in enumerate(sentences):
        for t, r in enumerate(s.roles):
            if r != NO_ROLE:
                y[i, t] = ROLES.index(r)
    return y


def length_batches(
    sentences: Sequence[RoleSentence], batch_size: int, gen: torch.Generator | None = None
) -> list[list[int]]:
    """Indices of sentences in batches of similar length (little padding), shuffled by ``gen`` if given."""
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if gen is not None:
        batches = [batches[int(j)] for j in torch.randperm(len(batches), generator=gen)]
    return batches


class BiGRUTagger(nn.Module):
    """Frozen fixed embeddings -> BiGRU -> linear role logits."""

    def __init__(self, cfg: BiGRUConfig, embeddings: FixedEmbeddings) -> None:
        super().__init__()
        if embeddings.dim != cfg.dim:
            raise ValueError(f"embeddings have dim {embeddings.dim}, BiGRUConfig.dim is {cfg.dim}")
        self.cfg = cfg
        self.vocab = embeddings
        self.embed = nn.Embedding.from_pretrained(embeddings.table.clone(), freeze=True, padding_idx=0)
        # The modules' default init draws from the global RNG; fork it so the caller's state is
        # untouched, then draw the weights that count from the config's own generator.
        with torch.random.fork_rng(devices=[]):
            self.gru = nn.GRU(cfg.dim, cfg.hidden, num_layers=cfg.layers, batch_first=True, bidirectional=True)
            self.head = nn.Linear(2 * cfg.hidden, len(ROLES))
        self.history: list[dict[str, float]] = []
        self.best_val_accuracy: float | None = None
        self._init_weights(torch.Generator().manual_seed(int(cfg.seed)))

    @torch.no_grad()
    def _init_weights(self, gen: torch.Generator) -> None:
        # PyTorch's own defaults (U(-1/sqrt(H), 1/sqrt(H)) for the GRU, U(-1/sqrt(fan_in), ..) for
        # the head), drawn again from the config's seed so the global RNG plays no part.
        for module, fan in ((self.gru, self.cfg.hidden), (self.head, self.head.in_features)):
            bound = fan**-0.5
            for p in module.parameters():
                p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T), lengths (B,) -> logits (B, T, R); packing keeps padding out of the backward GRU.

        A sentence of length 0 (a grammar may derive one) has no token to tag: it skips the GRU, which
        cannot pack it, and its row of logits is zeros (its targets are all ``IGNORE``, so no loss)."""
        keep = lengths > 0  # (B,)
        if not bool(keep.all()):
            logits = self.head.weight.new_zeros(*ids.shape, len(ROLES))  # (B, T, R)
            if bool(keep.any()):
                logits[keep] = self(ids[keep], lengths[keep])
            return logits
        x = self.embed(ids)  # (B, T, D)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        h, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])  # (B, T, 2H)
        return self.head(h)  # (B, T, R)

    @torch.no_grad()
    def predict(self, sentences: Sequence[RoleSentence], batch_size: int = 256) -> list[str]:
        """A role per scored token, in sentence order (as ``hebbian.role_targets``)."""
        self.eval()
        by_index: dict[int, list[str]] = {}
        for idx in length_batches(sentences, batch_size):
            part = [sentences[i] for i in idx]
            ids, lengths = self.vocab.ids(part)
            pred = self(ids, lengths).argmax(-1)  # (B, T)
            for row, i in enumerate(idx):
                s = sentences[i]
                by_index[i] = [ROLES[int(pred[row, t])] for t, r in enumerate(s.roles) if r != NO_ROLE]
        return [r for i in range(len(sentences)) for r in by_index[i]]

    def accuracy(self, sentences: Sequence[RoleSentence]) -> float:
        gold = [r for s in sentences for r in s.roles if r != NO_ROLE]
        if not gold:
            raise ValueError("no scored tokens to compute accuracy on")
        pred = self.predict(sentences)
        return sum(p == g for p, g in zip(pred, gold)) / len(gold)
