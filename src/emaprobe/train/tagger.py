"""Training loops of the role taggers: the BiGRU (supervised) and a linear probe on fixed features.

``train_tagger`` trains a ``BiGRUTagger`` with cross-entropy on the scored tokens and
Adam. With validation sentences it runs to convergence: early stopping on validation
accuracy with ``patience``, the best epoch restored. Without them (a label budget, where
every labelled token is counted and none is spent on a dev set) it runs a fixed number
of optimiser steps.

``LinearProbe`` is multinomial logistic regression on fixed feature vectors (the
Hebbian learner's contexts), trained full-batch with L-BFGS and an L2 penalty: the
supervised reading of the same features the Hebbian units cluster.

Used by ``emaprobe.experiments.roles``; a run of the whole experiment is
``emaprobe run roles`` (see its module docstring for time and numbers).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from emaprobe.models.bigru import IGNORE, BiGRUTagger, length_batches, role_ids
from emaprobe.tasks.sentence import ROLES, RoleSentence
from emaprobe.utils.progress import progress_disabled


@dataclass(frozen=True)
class TaggerTrainConfig:
    """How a tagger is trained; saved with every result.

    lr, weight_decay: Adam.  batch_size: sentences per step (batches hold sentences of
    similar length).  max_epochs, patience: early stopping on validation accuracy (best
    epoch restored).  steps: with no validation set, this many optimiser steps exactly.
    seed: batch order (a private generator).
    """

    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    max_epochs: int = 15
    patience: int = 3
    steps: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_epochs", "patience", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"TaggerTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TaggerTrainConfig.lr must be > 0, got {self.lr}")


def _step(model: BiGRUTagger, opt: torch.optim.Optimizer, part: Sequence[RoleSentence]) -> float | None:
    ids, lengths = model.vocab.ids(part)
    y = role_ids(part, ids.shape[1])  # (B, T)
    if not (y != IGNORE).any():
        return None
    logits = model(ids, lengths)  # (B, T, R)
    loss = nn.functional.cross_entropy(logits.reshape(-1, len(ROLES)), y.reshape(-1), ignore_index=IGNORE)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def train_tagger(
    model: BiGRUTagger,
    train: Sequence[RoleSentence],
    val: Sequence[RoleSentence] | None,
    cfg: TaggerTrainConfig,
    *,
    quiet: bool = False,
    desc: str = "bigru",
) -> BiGRUTagger:
    """Supervised training of ``model`` on ``train``; early stopping on ``val``, or ``cfg.steps`` steps.

    Appends one row per epoch (or per fixed-step run) to ``model.history``; sets
    ``model.best_val_accuracy`` when ``val`` is given. Returns ``model``.
    """
    if not train:
        raise ValueError("train_tagger needs non-empty training sentences")
    if val is not None and not val:
        raise ValueError("train_tagger: the validation set is empty (pass None to train a fixed number of steps)")
    gen = torch.Generator().manual_seed(int(cfg.seed))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    model.train()
    if val is None:
        losses: list[float] = []
        while len(losses) < cfg.steps:
            for idx in length_batches(train, min(cfg.batch_size, len(train)), gen):
                loss = _step(model, opt, [train[i] for i in idx])
                if loss is None:
                    continue
                losses.append(loss)
                if len(losses) == cfg.steps:
                    break
            if not losses:
                raise ValueError("train_tagger: no scored token in the training sentences")
        model.history.append({"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1]})
        return model.eval()
    best, best_state, bad = -1.0, None, 0
    disable = progress_disabled(quiet)
    bar = tqdm(range(cfg.max_epochs), desc=desc, disable=disable, leave=False)
    for epoch in bar:
        model.train()
        total, n = 0.0, 0
        for idx in length_batches(train, cfg.batch_size, gen):
            loss = _step(model, opt, [train[i] for i in idx])
            if loss is not None:
                total += loss * len(idx)
                n += len(idx)
        acc = model.accuracy(val)
        model.history.append({"epoch": epoch, "train_loss": total / max(n, 1), "val_accuracy": acc})
        bar.set_postfix(loss=f"{total / max(n, 1):.3f}", val=f"{acc:.3f}")
        if acc > best:
            best, best_state, bad = acc, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.best_val_accuracy = best
    return model.eval()


class LinearProbe:
    """Multinomial logistic regression on fixed features, L2-penalised, fitted by L-BFGS.

    ``fit(X (N, F), y (N,) role indices)``; ``predict(X) -> (N,)`` role indices. The
    penalty ``l2`` is on the mean loss, so it weighs more when labels are few.
    """

    def __init__(self, l2: float = 1e-3, max_iter: int = 200) -> None:
        if not (math.isfinite(l2) and l2 >= 0):  # NaN fails both
            raise ValueError(f"LinearProbe.l2 must be a finite number >= 0, got {l2}")
        self.l2, self.max_iter = l2, max_iter
        self.W: torch.Tensor | None = None  # (F, R)
        self.b: torch.Tensor | None = None  # (R,)

    def fit(self, X: torch.Tensor, y: torch.Tensor) -> LinearProbe:
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"LinearProbe.fit wants X (N, F) and y (N,), got {tuple(X.shape)} and {tuple(y.shape)}")
        if X.shape[0] == 0:
            raise ValueError("LinearProbe.fit: no labelled rows")
        X = X.double()
        W = torch.zeros(X.shape[1], len(ROLES), dtype=torch.float64, requires_grad=True)
        b = torch.zeros(len(ROLES), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([W, b], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(X @ W + b, y) + self.l2 * (W**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.W, self.b = W.detach(), b.detach()
        return self

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        if self.W is None:
            raise ValueError("LinearProbe is not fitted; call fit() first")
        return (X.double() @ self.W + self.b).argmax(1)
