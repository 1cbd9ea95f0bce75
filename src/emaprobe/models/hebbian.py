"""Hebbian role learner: competitive Hebbian units on multi-timescale EMA context, zero labels.

The structure claim of "EMA Is Not All You Need" (arXiv 2604.08556, claim 2): a
Hebbian learner whose only context is fixed-decay EMA traces assigns grammatical
roles nearly as well as a supervised BiGRU. The paper gives only that sentence;
the recipe below is this project's (DESIGN.md, "Grammatical role assignment").

Symbols
    V   vocabulary size (training words plus ``<unk>``; row 0 is the all-zero pad)
    D   embedding width                      E  (V, D) fixed random embeddings
    S   number of trace timescales           alphas (S,), default (.5, .1, .02)
    R   number of directions: 2 (forward and backward traces) or 1 (causal)
    F   context width = D * (1 + R * S)
    B   sentences in a batch, T tokens (right-padded), N scored tokens
    K   competitive units                    W  (K, F) unit weights, kept near unit norm by Oja
    c_t context of token t = [w_self * e_t ; h_fwd_{t-1}^(s) ; h_bwd_{t+1}^(s)], standardised
        and scaled to unit norm; h_bwd is the same EMA run right to left

Learning (no labels ever reach ``fit``): for a context c, every unit answers
y_k = w_k . c; the winner k* = argmax_k (y_k + b_k) takes an Oja step
``w_k* += lr * y (c - y w_k*)`` (Oja 1982, applied to the winner only, as in
Rumelhart & Zipser's competitive learning). ``b_k`` is DeSieno's (1988) conscience,
``gamma * (1/K - p_k)`` with p_k the unit's running win rate, which keeps units
from dying. Clusters are then named once by a one-to-one Hungarian assignment
(``scipy.optimize.linear_sum_assignment``) on labelled validation sentences, and the
mapping is frozen.

Which tokens are scored (the nouns that carry a role) is input, exactly as for the
supervised tagger; which role they carry is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from emaprobe.ops import ema_traces
from emaprobe.tasks.sentence import NO_ROLE, ROLES, RoleSentence

UNK = "<unk>"
PAD = "<pad>"
DIRECTIONS = ("both", "forward")
MAPPINGS = ("hungarian", "many_to_one")


# ----------------------------------------------------------------------------- embeddings


class FixedEmbeddings:
    """A vocabulary and its fixed random embedding table, shared by every role learner.

    Row 0 is the pad (all zeros, so padding never moves a trace); row 1 is ``<unk>``.
    Rows are N(0, 1/D), so embeddings have norm about 1.
    """

    def __init__(self, words: Sequence[str], dim: int, seed: int) -> None:
        if dim < 1:
            raise ValueError(f"embedding dim must be >= 1, got {dim}")
        self.itos: list[str] = [PAD, UNK] + sorted(set(words) - {PAD, UNK})
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        gen = torch.Generator().manual_seed(int(seed))
        table = torch.randn(len(self.itos), dim, generator=gen) / dim**0.5
        table[0] = 0.0
        self.table = table  # (V, D)

    @classmethod
    def from_sentences(cls, sentences: Sequence[RoleSentence], dim: int, seed: int) -> FixedEmbeddings:
        return cls([w for s in sentences for w in s.tokens], dim, seed)

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    def __len__(self) -> int:
        return len(self.itos)

    def ids(self, sentences: Sequence[RoleSentence]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids (B, T) and lengths (B,); unknown words map to ``<unk>``."""
        if len(sentences) == 0:
            raise ValueError("no sentences given")
        T = max(len(s) for s in sentences)
        ids = torch.zeros(len(sentences), T, dtype=torch.long)
        unk = self.stoi[UNK]
        for i, s in enumerate(sentences):
            ids[i, : len(s)] = torch.tensor([self.stoi.get(w, unk) for w in s.tokens], dtype=torch.long)
        lengths = torch.tensor([len(s) for s in sentences], dtype=torch.long)
        return ids, lengths


def scored_mask(sentences: Sequence[RoleSentence], T: int) -> torch.Tensor:
    """(B, T) bool: the tokens that carry a role (the only tokens scored or learned on)."""
    mask = torch.zeros(len(sentences), T, dtype=torch.bool)
    for i, s in enumerate(sentences):
        for t, r in enumerate(s.roles):
            mask[i, t] = r != NO_ROLE
    return mask


def role_targets(sentences: Sequence[RoleSentence]) -> list[str]:
    """Gold roles of the scored tokens, in the order ``contexts`` returns them."""
    return [r for s in sentences for r in s.roles if r != NO_ROLE]


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class HebbianConfig:
    """Everything that defines a Hebbian role learner; saved with every result.

    dim: embedding width D.  alphas: EMA coefficients, one per timescale.
    directions: "both" (forward and backward traces) or "forward" (the causal variant).
    self_weight: scale of the token's own embedding in the context (1 = as the spec).
    exclude_self: traces read h_{t-1} (forward) and h_{t+1} (backward), so the context
        part describes the neighbours and the token enters once, through e_t.
    n_units: K.  epochs, lr, lr_final: passes over the scored training tokens and a
        geometric learning-rate decay between lr and lr_final.  batch_size: tokens per
        competitive step.  conscience: DeSieno's gamma (0 turns it off).
    mapping: "hungarian" (one-to-one, the spec; needs K >= 3 and leaves K - 3 clusters
        unnamed, whose tokens count as wrong) or "many_to_one" (each cluster takes its
        majority role on validation; the usual induction metric, optimistic for large K).
    seed: initial units and the order of training tokens.
    """

    dim: int = 64
    alphas: tuple[float, ...] = (0.5, 0.1, 0.02)
    directions: str = "both"
    self_weight: float = 1.0
    exclude_self: bool = True
    n_units: int = 3
    epochs: int = 8
    lr: float = 0.05
    lr_final: float = 0.002
    batch_size: int = 32
    conscience: float = 0.3
    mapping: str = "hungarian"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.directions not in DIRECTIONS:
            raise ValueError(f"unknown directions {self.directions!r}; choose one of {sorted(DIRECTIONS)}")
        if self.mapping not in MAPPINGS:
            raise ValueError(f"unknown mapping {self.mapping!r}; choose one of {sorted(MAPPINGS)}")
        if self.n_units < 1:
            raise ValueError(f"HebbianConfig.n_units must be >= 1, got {self.n_units}")
        if self.mapping == "hungarian" and self.n_units < len(ROLES):
            raise ValueError(f"HebbianConfig.n_units={self.n_units}: a one-to-one mapping needs >= {len(ROLES)} units")
        for name in ("epochs", "batch_size", "dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"HebbianConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and self.lr_final > 0):
            raise ValueError(f"HebbianConfig.lr and lr_final must be > 0, got {self.lr}, {self.lr_final}")


# ----------------------------------------------------------------------------- context


def context_vectors(
    emb: FixedEmbeddings, sentences: Sequence[RoleSentence], cfg: HebbianConfig, chunk: int = 512
) -> torch.Tensor:
    """Raw (unstandardised) contexts of the scored tokens, (N, F), in sentence order."""
    out = []
    for i in range(0, len(sentences), chunk):
        part = sentences[i : i + chunk]
        ids, lengths = emb.ids(part)
        x = emb.table[ids]  # (B, T, D); pads are zero, so traces ignore them
        B, T, D = x.shape
        feats = [cfg.self_weight * x]
        fwd = ema_traces(x, cfg.alphas)  # (B, T, S, D)
        if cfg.exclude_self:
            fwd = torch.cat([torch.zeros_like(fwd[:, :1]), fwd[:, :-1]], dim=1)  # h_{t-1}
        feats.append(fwd.reshape(B, T, -1))
        if cfg.directions == "both":
            # Right padding reversed becomes leading zeros, which leave h at 0: exact per sentence.
            bwd = ema_traces(x.flip(1), cfg.alphas).flip(1)  # (B, T, S, D)
            if cfg.exclude_self:
                bwd = torch.cat([bwd[:, 1:], torch.zeros_like(bwd[:, :1])], dim=1)  # h_{t+1}
            feats.append(bwd.reshape(B, T, -1))
        ctx = torch.cat(feats, dim=-1)  # (B, T, F)
        out.append(ctx[scored_mask(part, T)])  # (N_chunk, F)
    return torch.cat(out, dim=0)


# ----------------------------------------------------------------------------- learner


class HebbianRoleLearner:
    """Competitive Hebbian role units on EMA context; ``fit`` never sees a role label.

    Use: ``fit(train)`` (unlabelled), ``name_clusters(validation)`` (once), then
    ``predict(sentences)`` -> a role per scored token, or ``evaluate``.
    """

    def __init__(self, cfg: HebbianConfig, embeddings: FixedEmbeddings) -> None:
        if embeddings.dim != cfg.dim:
            raise ValueError(f"embeddings have dim {embeddings.dim}, HebbianConfig.dim is {cfg.dim}")
        self.cfg = cfg
        self.emb = embeddings
        self.W: torch.Tensor | None = None  # (K, F)
        self.mean: torch.Tensor | None = None  # (F,)
        self.std: torch.Tensor | None = None  # (F,)
        self.cluster_to_role: dict[int, str] | None = None
        self.history: list[dict[str, float]] = []

    # -- features
    def features(self, sentences: Sequence[RoleSentence]) -> torch.Tensor:
        """Standardised, unit-norm contexts of the scored tokens, (N, F)."""
        if self.mean is None:
            raise ValueError("HebbianRoleLearner is not fitted; call fit() first")
        c = (context_vectors(self.emb, sentences, self.cfg) - self.mean) / self.std
        return c / c.norm(dim=1, keepdim=True).clamp_min(1e-8)

    # -- learning
    def fit(self, sentences: Sequence[RoleSentence]) -> HebbianRoleLearner:
        """Learn the units from the tokens of ``sentences`` alone (roles only mark which are scored)."""
        cfg = self.cfg
        raw = context_vectors(self.emb, sentences, cfg)  # (N, F)
        if raw.shape[0] < cfg.n_units:
            raise ValueError(f"{raw.shape[0]} scored training tokens for {cfg.n_units} units")
        self.mean = raw.mean(0)
        self.std = raw.std(0).clamp_min(1e-6)
        X = (raw - self.mean) / self.std
        X = X / X.norm(dim=1, keepdim=True).clamp_min(1e-8)  # (N, F)
        N, F = X.shape
        K = cfg.n_units
        gen = torch.Generator().manual_seed(int(cfg.seed))
        # Units start on random training contexts (unit norm): none starts far from the data.
        W = X[torch.randperm(N, generator=gen)[:K]].clone()  # (K, F)
        win_rate = torch.full((K,), 1.0 / K)
        steps = cfg.epochs * ((N + cfg.batch_size - 1) // cfg.batch_size)
        decay = (cfg.lr_final / cfg.lr) ** (1.0 / max(steps - 1, 1))
        lr, step = cfg.lr, 0
        for epoch in range(cfg.epochs):
            order = torch.randperm(N, generator=gen)
            moved = 0.0
            for i in range(0, N, cfg.batch_size):
                xb = X[order[i : i + cfg.batch_size]]  # (b, F)
                y = xb @ W.T  # (b, K)
                win = (y + cfg.conscience * (1.0 / K - win_rate)).argmax(1)  # (b,)
                onehot = torch.nn.functional.one_hot(win, K).float()  # (b, K)
                yw = (y * onehot).sum(1, keepdim=True)  # (b, 1) the winner's answer
                # Oja: dw = lr * y (x - y w), averaged over the tokens each unit won.
                hebb = onehot.T @ (yw * xb)  # (K, F)
                decay_term = (onehot * yw**2).sum(0, keepdim=True).T * W  # (K, F)
                counts = onehot.sum(0).clamp_min(1.0).unsqueeze(1)  # (K, 1)
                dW = lr * (hebb - decay_term) / counts
                W = W + dW
                moved += float(dW.norm())
                win_rate = 0.99 * win_rate + 0.01 * onehot.mean(0)
                lr *= decay
                step += 1
            self.history.append({"epoch": epoch, "update_norm": moved, "lr": lr})
        self.W = W
        return self

    # -- assignment
    def clusters(self, sentences: Sequence[RoleSentence]) -> torch.Tensor:
        """Winning unit of every scored token, (N,) long (no conscience at test time)."""
        if self.W is None:
            raise ValueError("HebbianRoleLearner is not fitted; call fit() first")
        return (self.features(sentences) @ self.W.T).argmax(1)

    def name_clusters(self, sentences: Sequence[RoleSentence]) -> dict[int, str]:
        """Name clusters by roles on labelled ``sentences`` (A-validation), once; then frozen."""
        if self.cluster_to_role is not None:
            raise ValueError("clusters are already named; the mapping is frozen after the first call")
        counts = self.confusion(sentences)  # (K, R)
        if self.cfg.mapping == "hungarian":
            rows, cols = linear_sum_assignment(-counts)
            mapping = {int(k): ROLES[int(r)] for k, r in zip(rows, cols)}
        else:
            mapping = {k: ROLES[int(np.argmax(counts[k]))] for k in range(counts.shape[0]) if counts[k].sum() > 0}
        self.cluster_to_role = mapping
        return dict(mapping)

    def confusion(self, sentences: Sequence[RoleSentence]) -> np.ndarray:
        """(K, 3) counts of gold roles per winning unit."""
        win = self.clusters(sentences).numpy()
        gold = role_targets(sentences)
        counts = np.zeros((self.cfg.n_units, len(ROLES)), dtype=np.int64)
        for k, r in zip(win, gold):
            counts[k, ROLES.index(r)] += 1
        return counts

    def predict(self, sentences: Sequence[RoleSentence]) -> list[str]:
        """A role per scored token; tokens of an unnamed cluster get ``NO_ROLE`` (scored wrong)."""
        if self.cluster_to_role is None:
            raise ValueError("clusters are not named; call name_clusters() on validation sentences first")
        return [self.cluster_to_role.get(int(k), NO_ROLE) for k in self.clusters(sentences)]
