"""BiGRU role tagger: the supervised reference of the structure claim.

"EMA Is Not All You Need" (arXiv 2604.08556) compares its label-free Hebbian learner
with "a supervised BiGRU" on grammatical role assignment; the paper gives nothing
more, so this tagger is this project's (DESIGN.md, "Grammatical role assignment"):
the same fixed random embeddings as the Hebbian learner (frozen), a bidirectional
GRU, a linear read-out to the three roles, cross-entropy on the scored tokens only,
Adam, and early stopping on validation accuracy.

Symbols
    B  sentences in a batch     T  tokens (right-padded)     D  embedding width
    H  GRU hidden width per direction                        R  = 3 roles
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from tqdm import tqdm

from emaprobe.models.hebbian import FixedEmbeddings
from emaprobe.tasks.sentence import NO_ROLE, ROLES, RoleSentence

IGNORE = -100


@dataclass(frozen=True)
class BiGRUConfig:
    """Everything that defines the tagger and its training; saved with every result.

    dim: embedding width D (the embeddings are fixed and shared with the Hebbian learner).
    hidden: H per direction.  layers: stacked GRU layers.  lr, weight_decay: Adam.
    batch_size: sentences per step (batches hold sentences of similar length).
    max_epochs, patience: early stopping on validation accuracy, best epoch restored.
    seed: initial weights and batch order.
    """

    dim: int = 64
    hidden: int = 64
    layers: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    max_epochs: int = 15
    patience: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "layers", "batch_size", "max_epochs", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"BiGRUConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"BiGRUConfig.lr must be > 0, got {self.lr}")


def role_ids(sentences: Sequence[RoleSentence], T: int) -> torch.Tensor:
    """(B, T) role index per token, ``IGNORE`` where the token is not scored or is padding."""
    y = torch.full((len(sentences), T), IGNORE, dtype=torch.long)
    for i, s in enumerate(sentences):
        for t, r in enumerate(s.roles):
            if r != NO_ROLE:
                y[i, t] = ROLES.index(r)
    return y


class BiGRUTagger(nn.Module):
    """Frozen fixed embeddings -> BiGRU -> linear role logits."""

    def __init__(self, cfg: BiGRUConfig, embeddings: FixedEmbeddings) -> None:
        super().__init__()
        if embeddings.dim != cfg.dim:
            raise ValueError(f"embeddings have dim {embeddings.dim}, BiGRUConfig.dim is {cfg.dim}")
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.vocab = embeddings
        self.embed = nn.Embedding.from_pretrained(embeddings.table.clone(), freeze=True, padding_idx=0)
        self.gru = nn.GRU(cfg.dim, cfg.hidden, num_layers=cfg.layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * cfg.hidden, len(ROLES))
        self.history: list[dict[str, float]] = []

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T), lengths (B,) -> logits (B, T, R); packing keeps padding out of the backward GRU."""
        x = self.embed(ids)  # (B, T, D)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        h, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])  # (B, T, 2H)
        return self.head(h)  # (B, T, R)

    # -- training
    def _batches(self, sentences: Sequence[RoleSentence], gen: torch.Generator | None) -> list[list[int]]:
        # Sentences of similar length share a batch, so padding costs little on long treebank text.
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        batches = [order[i : i + self.cfg.batch_size] for i in range(0, len(order), self.cfg.batch_size)]
        if gen is not None:
            batches = [batches[int(j)] for j in torch.randperm(len(batches), generator=gen)]
        return batches

    def fit(
        self,
        train: Sequence[RoleSentence],
        val: Sequence[RoleSentence],
        *,
        quiet: bool = False,
        desc: str = "bigru",
    ) -> BiGRUTagger:
        """Supervised training on ``train`` with early stopping on accuracy over ``val``."""
        cfg = self.cfg
        if not train or not val:
            raise ValueError("BiGRUTagger.fit needs non-empty train and validation sentences")
        gen = torch.Generator().manual_seed(cfg.seed)
        opt = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=cfg.lr,
                               weight_decay=cfg.weight_decay)
        best, best_state, bad = -1.0, None, 0
        disable = quiet or bool(os.environ.get("TQDM_DISABLE"))
        bar = tqdm(range(cfg.max_epochs), desc=desc, disable=disable, leave=False)
        for epoch in bar:
            self.train()
            total, n = 0.0, 0
            for idx in self._batches(train, gen):
                part = [train[i] for i in idx]
                ids, lengths = self.vocab.ids(part)
                y = role_ids(part, ids.shape[1])  # (B, T)
                if not (y != IGNORE).any():
                    continue
                logits = self(ids, lengths)  # (B, T, R)
                loss = nn.functional.cross_entropy(logits.reshape(-1, len(ROLES)), y.reshape(-1), ignore_index=IGNORE)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(part)
                n += len(part)
            acc = self.accuracy(val)
            self.history.append({"epoch": epoch, "train_loss": total / max(n, 1), "val_accuracy": acc})
            bar.set_postfix(loss=f"{total / max(n, 1):.3f}", val=f"{acc:.3f}")
            if acc > best:
                best, best_state, bad = acc, copy.deepcopy(self.state_dict()), 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        if best_state is not None:
            self.load_state_dict(best_state)
        self.best_val_accuracy = best
        return self

    # -- inference
    @torch.no_grad()
    def predict(self, sentences: Sequence[RoleSentence]) -> list[str]:
        """A role per scored token, in sentence order (as ``hebbian.role_targets``)."""
        self.eval()
        by_index: dict[int, list[str]] = {}
        for idx in self._batches(sentences, None):
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
