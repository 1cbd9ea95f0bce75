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
    c_t context of token t = [e_t ; h_fwd_{t-1}^(s) ; h_bwd_{t+1}^(s)], standardised per
        feature, weighted (``self_weight`` on e_t, ``timescale_weights[s]`` on the traces, times
        ``backward_weight`` on h_bwd) and scaled to unit norm; h_bwd is the same EMA run right to left
    C   optional word classes: e_t is then replaced by a fixed random code of the class a
        first competitive stage gives the token's word type (``HebbianConfig.word_classes``),
        except for the ``keep_frequent`` most frequent types, which keep their own e_t

Learning (no labels ever reach ``fit``): for a context c, every unit answers
y_k = w_k . c; the winner k* = argmax_k (y_k + b_k) takes an Oja step
``w_k* += lr * y (c - y w_k*)`` (Oja 1982, applied to the winner only, as in
Rumelhart & Zipser's competitive learning). ``b_k`` is DeSieno's (1988) conscience,
``gamma * (1/K - p_k)`` with p_k the unit's running win rate, which keeps units
from dying. The units learn on every noun (``train_on="nouns"``; adjunct-PP nouns,
which carry no role, too) or every token (``"tokens"``); never on the gold set of
role-bearing tokens, which is only where accuracy is scored.

Naming: once, on labelled sentences (A-validation, or a label budget of it), then
frozen. The spec names K = 3 units one-to-one (Hungarian,
``scipy.optimize.linear_sum_assignment``); the two-stage variant (``word_classes``,
``keep_frequent``, K in the hundreds) names many-to-one, and a unit no label reached
takes the role of its nearest named unit. Every scored token of the naming
sentences is a label used.
"""

from __future__ import annotations

import copy
import dataclasses
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
TRAIN_ON = ("nouns", "tokens")


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


def token_mask(sentences: Sequence[RoleSentence], T: int, which: str) -> torch.Tensor:
    """(B, T) bool: "scored" (role-bearing), "nouns" (noun marks) or "tokens" (every real token)."""
    mask = torch.zeros(len(sentences), T, dtype=torch.bool)
    for i, s in enumerate(sentences):
        if which == "scored":
            mask[i, : len(s)] = torch.tensor([r != NO_ROLE for r in s.roles], dtype=torch.bool)
        elif which == "nouns":
            if len(s) and not s.noun:
                raise ValueError(
                    f"sentence {i} ({s.text[:40]!r}) carries no noun marks; train_on='nouns' needs them "
                    "(grammar and UD sentences have them), or use train_on='tokens'"
                )
            mask[i, : len(s)] = torch.tensor(s.noun, dtype=torch.bool)
        elif which == "tokens":
            mask[i, : len(s)] = True
        else:
            raise ValueError(f"unknown token set {which!r}; choose one of ['nouns', 'scored', 'tokens']")
    return mask


def role_targets(sentences: Sequence[RoleSentence]) -> list[str]:
    """Gold roles of the scored tokens, in the order ``raw_contexts`` and ``predict`` return them."""
    return [r for s in sentences for r in s.roles if r != NO_ROLE]


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class HebbianConfig:
    """Everything that defines a Hebbian role learner; saved with every result.

    dim: embedding width D.  alphas: EMA coefficients, one per timescale.
    directions: "both" (forward and backward traces) or "forward" (the causal variant).
    self_weight: weight of the token's own code in the context (1 = as the spec), applied
        after each feature is standardised, as are ``timescale_weights``.
    timescale_weights: one weight per alpha on the trace features of that timescale (empty:
        all 1, the spec); with 2 directions both get the same weight.
    backward_weight: a further weight on every backward-trace feature (h_bwd, right context),
        after standardising, on top of ``timescale_weights``: 1 = both directions alike (the
        spec), 0 = the role context without its backward traces (they are then zero). Only
        the role stage reads it (the word-class stage keeps both directions alike); with
        ``directions="forward"`` there is nothing to weight and it is ignored.
    exclude_self: traces read h_{t-1} (forward) and h_{t+1} (backward), so the context
        part describes the neighbours and the token enters once, through its own code.
    n_units: K.  epochs, lr, lr_final: passes over the training tokens and a geometric
        learning-rate decay between lr and lr_final.  batch_size: tokens per competitive
        step.  conscience: DeSieno's gamma for the role units (0 turns it off).
    train_on: which tokens the role units learn from: "nouns" (every noun, role-bearing or
        not, e.g. the object of an adjunct PP too) or "tokens" (every token). Never the
        gold set of role-bearing tokens: that set is what is scored, not an input.
    mapping: "hungarian" (one-to-one, the spec; needs K >= 3 and leaves K - 3 clusters
        unnamed, whose tokens count as wrong) or "many_to_one" (each cluster takes its
        majority role among the labelled naming tokens; a cluster no naming token reached
        takes the role of the nearest named unit, by cosine of the unit weights).
    word_classes: C > 0 adds a first Hebbian stage (``WordClasses``) that clusters word
        types by their averaged trace context and re-codes every token by a fixed random
        vector of its class before the role traces are taken; 0 = the spec (raw embeddings).
    keep_frequent: with word classes, the this-many most frequent word types keep their
        own code instead of a class code (function words such as "by", "to", "was" and
        "that" carry the construction; merging them into a class erases it).
    class_conscience: the word-class stage's own conscience. Its rows are word types, not
        tokens, and word classes are very unequal in size (40 nouns, 2 determiners); a
        conscience that pushes every class toward an equal share of types fights that, so
        the default is 0 (measured on A-validation: results/roles/README.md).
    class_epochs: passes of the word-class stage over the word types.
    class_restarts: restarts of the word-class units from new random starts; the restart
        whose units answer their winners best (mean winning cosine, no labels) is kept.
    class_rounds: rounds of word-class induction; round r > 0 clusters the types again by
        their contexts over round r-1's codes (sharper: 40 nouns become one code first).
    min_count: words rarer than this in training share the ``<unk>`` word class.
    seed: initial units and the order of training tokens.
    members: learners that vote (``HebbianVote``): member j is this config with seed
        ``seed + 100 j``, so its word classes, unit starts and token order differ; 1 = one learner.
    """

    dim: int = 64
    alphas: tuple[float, ...] = (0.5, 0.1, 0.02)
    directions: str = "both"
    self_weight: float = 1.0
    timescale_weights: tuple[float, ...] = ()
    backward_weight: float = 1.0
    exclude_self: bool = True
    n_units: int = 3
    epochs: int = 8
    lr: float = 0.05
    lr_final: float = 0.002
    batch_size: int = 32
    conscience: float = 0.3
    train_on: str = "nouns"
    word_classes: int = 0
    keep_frequent: int = 0
    class_conscience: float = 0.0
    class_epochs: int = 32
    class_rounds: int = 1
    class_restarts: int = 1
    min_count: int = 2
    mapping: str = "hungarian"
    seed: int = 0
    members: int = 1

    @property
    def n_directions(self) -> int:
        return 2 if self.directions == "both" else 1

    def __post_init__(self) -> None:
        if self.directions not in DIRECTIONS:
            raise ValueError(f"unknown directions {self.directions!r}; choose one of {sorted(DIRECTIONS)}")
        if self.mapping not in MAPPINGS:
            raise ValueError(f"unknown mapping {self.mapping!r}; choose one of {sorted(MAPPINGS)}")
        if self.train_on not in TRAIN_ON:
            raise ValueError(f"unknown train_on {self.train_on!r}; choose one of {sorted(TRAIN_ON)}")
        if self.n_units < 1:
            raise ValueError(f"HebbianConfig.n_units must be >= 1, got {self.n_units}")
        if self.members < 1:
            raise ValueError(f"HebbianConfig.members must be >= 1, got {self.members}")
        if self.mapping == "hungarian" and self.n_units < len(ROLES):
            raise ValueError(f"HebbianConfig.n_units={self.n_units}: a one-to-one mapping needs >= {len(ROLES)} units")
        for name in ("epochs", "batch_size", "dim", "class_epochs", "class_rounds", "class_restarts"):
            if getattr(self, name) < 1:
                raise ValueError(f"HebbianConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("word_classes", "keep_frequent"):
            if getattr(self, name) < 0:
                raise ValueError(f"HebbianConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_frequent and not self.word_classes:
            raise ValueError("HebbianConfig.keep_frequent needs word_classes > 0 (it keeps types out of the classes)")
        if self.timescale_weights and len(self.timescale_weights) != len(self.alphas):
            raise ValueError(f"HebbianConfig.timescale_weights has {len(self.timescale_weights)} entries for "
                             f"{len(self.alphas)} alphas")
        if not (self.backward_weight >= 0 and np.isfinite(self.backward_weight)):
            raise ValueError(f"HebbianConfig.backward_weight must be a finite number >= 0, got {self.backward_weight}")
        if not (self.lr > 0 and self.lr_final > 0):
            raise ValueError(f"HebbianConfig.lr and lr_final must be > 0, got {self.lr}, {self.lr_final}")


# ----------------------------------------------------------------------------- competitive Hebbian units


def competitive_learn(
    X: torch.Tensor,
    n_units: int,
    *,
    epochs: int,
    lr: float,
    lr_final: float,
    batch_size: int,
    conscience: float,
    generator: torch.Generator,
    history: list[dict[str, float]] | None = None,
) -> torch.Tensor:
    """Winner-take-all units with Oja-normalised updates on rows of X (N, F); returns W (K, F).

    For each row x the winner k* = argmax_k (w_k . x + b_k) moves by Oja's rule
    ``lr * y (x - y w)``, y = w_k* . x, averaged over the rows it won in a batch. Oja's
    decay term keeps |w| near 1 without an explicit renormalisation.
    """
    N, F = X.shape
    K = n_units
    if N < K:
        raise ValueError(f"{N} training vectors for {K} units")
    # Units start on random training vectors (unit norm): none starts far from the data.
    W = X[torch.randperm(N, generator=generator)[:K]].clone()  # (K, F)
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-8)
    win_rate = torch.full((K,), 1.0 / K)
    steps = epochs * ((N + batch_size - 1) // batch_size)
    decay = (lr_final / lr) ** (1.0 / max(steps - 1, 1))
    for epoch in range(epochs):
        order = torch.randperm(N, generator=generator)
        moved = 0.0
        for i in range(0, N, batch_size):
            xb = X[order[i : i + batch_size]]  # (b, F)
            y = xb @ W.T  # (b, K)
            win = (y + conscience * (1.0 / K - win_rate)).argmax(1)  # (b,)
            onehot = torch.nn.functional.one_hot(win, K).to(X.dtype)  # (b, K)
            yw = (y * onehot).sum(1, keepdim=True)  # (b, 1) the winner's answer
            hebb = onehot.T @ (yw * xb)  # (K, F)
            oja = (onehot * yw**2).sum(0).unsqueeze(1) * W  # (K, F)
            counts = onehot.sum(0).clamp_min(1.0).unsqueeze(1)  # (K, 1)
            dW = lr * (hebb - oja) / counts
            W = W + dW
            moved += float(dW.norm())
            win_rate = 0.99 * win_rate + 0.01 * onehot.mean(0)
            lr *= decay
        if history is not None:
            history.append({"epoch": epoch, "update_norm": moved, "lr": lr})
    return W


def winners(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Winning unit of every row of X (N, F) against W (K, F), (N,) long; one winner per row."""
    return (X @ W.T).argmax(1)


def _unit_rows(X: torch.Tensor) -> torch.Tensor:
    return X / X.norm(dim=1, keepdim=True).clamp_min(1e-8)


# ----------------------------------------------------------------------------- context


def trace_context(x: torch.Tensor, cfg: HebbianConfig) -> torch.Tensor:
    """(B, T, D) token vectors -> (B, T, R*S*D) forward [and backward] traces of the neighbours."""
    B, T, D = x.shape
    fwd = ema_traces(x, cfg.alphas)  # (B, T, S, D)
    if cfg.exclude_self:
        fwd = torch.cat([torch.zeros_like(fwd[:, :1]), fwd[:, :-1]], dim=1)  # h_{t-1}
    feats = [fwd.reshape(B, T, -1)]
    if cfg.directions == "both":
        # Right padding reversed becomes leading zeros, which leave h at 0: exact per sentence.
        bwd = ema_traces(x.flip(1), cfg.alphas).flip(1)  # (B, T, S, D)
        if cfg.exclude_self:
            bwd = torch.cat([bwd[:, 1:], torch.zeros_like(bwd[:, :1])], dim=1)  # h_{t+1}
        feats.append(bwd.reshape(B, T, -1))
    return torch.cat(feats, dim=-1)


def _chunks(sentences: Sequence[RoleSentence], size: int = 512):
    for i in range(0, len(sentences), size):
        yield sentences[i : i + size]


class WordClasses:
    """First Hebbian stage: word classes from the averaged EMA context of each word type.

    Each type's context is the mean of its tokens' neighbour traces (the distributional
    signature of Schutze 1995, here with EMA traces); competitive units cluster these
    into C classes; every token is then re-coded by a fixed random vector of its class.
    The ``keep_frequent`` most frequent types keep their own embedding as their code
    (the frequent-words-apart idea of Brown et al. 1992 and Clark 2003 class induction).
    Words seen fewer than ``min_count`` times in training share the ``<unk>`` class;
    padding and words with no class (unseen in training) get a zero code, which leaves
    the traces untouched. Trains on tokens alone.
    """

    def __init__(self, cfg: HebbianConfig, emb: FixedEmbeddings) -> None:
        self.cfg, self.emb = cfg, emb
        self.type_class = torch.full((len(emb),), -1, dtype=torch.long)  # (V,)
        self.kept = torch.zeros(len(emb), dtype=torch.bool)  # (V,) types that keep their own code
        gen = torch.Generator().manual_seed(int(cfg.seed) + 7919)
        self.codes = torch.randn(cfg.word_classes, emb.dim, generator=gen) / emb.dim**0.5  # (C, D)

    def fit(self, sentences: Sequence[RoleSentence]) -> WordClasses:
        """``class_rounds`` rounds; round r > 0 takes type contexts over round r-1's codes."""
        for r in range(self.cfg.class_rounds):
            self._fit_round(sentences, r)
        return self

    def _fit_round(self, sentences: Sequence[RoleSentence], round_: int) -> None:
        V, cfg = len(self.emb), self.cfg
        F = self.emb.dim * cfg.n_directions * len(cfg.alphas)
        sums = torch.zeros(V, F)
        counts = torch.zeros(V)
        for part in _chunks(sentences):
            ids, lengths = self.emb.ids(part)
            x = self.emb.table[ids] if round_ == 0 else self.encode(ids)  # (B, T, D)
            ctx = trace_context(x, cfg)  # (B, T, F)
            real = ids > 0
            sums.index_add_(0, ids[real], ctx[real])
            counts.index_add_(0, ids[real], torch.ones(int(real.sum())))
        unk = self.emb.stoi[UNK]
        kept = torch.zeros(V, dtype=torch.bool)
        if cfg.keep_frequent:
            freq = counts.clone()
            freq[0] = freq[unk] = -1.0
            top = torch.argsort(freq, descending=True, stable=True)[: cfg.keep_frequent]
            kept[top[freq[top] > 0]] = True
        rare = (counts < cfg.min_count) & (counts > 0)
        rare[unk] = False
        sums[unk] += sums[rare].sum(0)
        counts[unk] += counts[rare].sum()
        seen = (counts >= cfg.min_count) & ~kept
        seen[unk] = bool(counts[unk] > 0)
        seen[0] = False
        if int(seen.sum()) < cfg.word_classes:
            raise ValueError(
                f"{int(seen.sum())} word types left to cluster (after keep_frequent={cfg.keep_frequent}) "
                f"for {cfg.word_classes} word classes"
            )
        M = sums[seen] / counts[seen].unsqueeze(1)  # (V_seen, F)
        M = _unit_rows((M - M.mean(0)) / M.std(0).clamp_min(1e-6))
        # Competitive learning on ~100 type rows lands in a poor basin now and then (nouns and
        # verbs sharing a unit); restarts, kept by their own unsupervised fit (the mean
        # winning answer, the quantity WTA + Oja climbs), make it reliable.
        best = None
        for restart in range(cfg.class_restarts):
            gen = torch.Generator().manual_seed(int(cfg.seed) + 104729 + 7 * round_ + 1000 * restart)
            W = competitive_learn(
                M, cfg.word_classes, epochs=cfg.class_epochs, lr=cfg.lr, lr_final=cfg.lr_final,
                batch_size=cfg.batch_size, conscience=cfg.class_conscience, generator=gen,
            )
            fit = float((M @ _unit_rows(W).T).max(1).values.mean())
            if best is None or fit > best[0]:
                best = (fit, W)
        W = best[1]
        # -1 = no class: a word never seen in training gets a zero code and leaves the traces alone.
        type_class = torch.full((V,), -1, dtype=torch.long)
        type_class[seen] = winners(M, W)
        type_class[rare] = type_class[unk]
        self.type_class = type_class
        self.kept = kept
        self.weights = W

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, D) codes: a kept type's own embedding, else its class code; pads zero."""
        cls = self.type_class[ids]  # (B, T)
        x = self.codes[cls.clamp_min(0)] * (cls >= 0).unsqueeze(-1).to(self.codes.dtype)  # (B, T, D)
        keep = self.kept[ids].unsqueeze(-1)  # (B, T, 1)
        return torch.where(keep, self.emb.table[ids], x)

    def summary(self, examples: int = 40) -> dict[str, object]:
        """Kept types, and every class's size and first ``examples`` members, for result files
        (a treebank's classes hold thousands of types)."""
        itos = self.emb.itos
        classes: dict[str, list[str]] = {}
        for v, c in enumerate(self.type_class.tolist()):
            if c >= 0:
                classes.setdefault(str(c), []).append(itos[v])
        return {"kept": [itos[v] for v in torch.nonzero(self.kept).flatten().tolist()],
                "classes": {c: {"size": len(ws), "members": ws[:examples]} for c, ws in sorted(classes.items())}}


# ----------------------------------------------------------------------------- learner


class HebbianRoleLearner:
    """Competitive Hebbian role units on EMA context; ``fit`` never sees a role label.

    Use: ``fit(train)`` (unlabelled: it reads tokens, and noun marks when ``train_on`` is
    "nouns"), ``name_clusters(labelled)`` (once), then ``predict(sentences)`` -> a role per
    scored token. ``features`` gives the same context vectors to a linear probe.
    """

    def __init__(self, cfg: HebbianConfig, embeddings: FixedEmbeddings) -> None:
        if embeddings.dim != cfg.dim:
            raise ValueError(f"embeddings have dim {embeddings.dim}, HebbianConfig.dim is {cfg.dim}")
        self.cfg = cfg
        self.emb = embeddings
        self.classes: WordClasses | None = None
        self.W: torch.Tensor | None = None  # (K, F)
        self.mean: torch.Tensor | None = None  # (F,)
        self.std: torch.Tensor | None = None  # (F,)
        self.cluster_to_role: dict[int, str] | None = None
        self.n_named_from_labels = 0
        self.history: list[dict[str, float]] = []

    # -- features
    def raw_contexts(self, sentences: Sequence[RoleSentence], tokens: str = "scored") -> torch.Tensor:
        """Unstandardised contexts (N, F), in sentence order, of the ``tokens`` picked by ``token_mask``."""
        out = []
        for part in _chunks(sentences):
            ids, _ = self.emb.ids(part)
            x = self.classes.encode(ids) if self.classes is not None else self.emb.table[ids]  # (B, T, D)
            ctx = torch.cat([x, trace_context(x, self.cfg)], dim=-1)  # (B, T, F)
            out.append(ctx[token_mask(part, ids.shape[1], tokens)])  # (N_part, F)
        return torch.cat(out, dim=0)

    def features(self, sentences: Sequence[RoleSentence]) -> torch.Tensor:
        """Standardised, unit-norm contexts of the scored tokens, (N, F)."""
        if self.mean is None:
            raise ValueError("HebbianRoleLearner is not fitted; call fit() first")
        return self._normalise(self.raw_contexts(sentences))

    def _normalise(self, raw: torch.Tensor) -> torch.Tensor:
        # Weights act after standardisation (before it, a per-feature scale would be undone).
        return _unit_rows((raw - self.mean) / self.std * self.block_weights())  # (N, F)

    def block_weights(self) -> torch.Tensor:
        """(F,) weight of each context feature: ``self_weight`` on the token's own code, then
        ``timescale_weights[s]`` on every trace feature of timescale s (both directions), times
        ``backward_weight`` on the backward ones. Layout: [e_t (D) ; fwd (S*D) ; bwd (S*D)]."""
        cfg, D = self.cfg, self.emb.dim
        ts = torch.tensor(cfg.timescale_weights or (1.0,) * len(cfg.alphas), dtype=torch.float32)  # (S,)
        per_dir = ts.repeat_interleave(D)  # (S*D,)
        parts = [per_dir]
        if cfg.n_directions == 2:
            parts.append(per_dir * float(cfg.backward_weight))
        trace = torch.cat(parts)  # (R*S*D,)
        return torch.cat([torch.full((D,), float(cfg.self_weight)), trace])

    # -- learning
    def fit(self, sentences: Sequence[RoleSentence]) -> HebbianRoleLearner:
        """Learn from the tokens of ``sentences`` alone; no role, and no role-bearing mask, is read."""
        cfg = self.cfg
        if cfg.word_classes > 0:
            self.classes = WordClasses(cfg, self.emb).fit(sentences)
        raw = self.raw_contexts(sentences, cfg.train_on)  # (N, F)
        self.mean = raw.mean(0)
        self.std = raw.std(0).clamp_min(1e-6)
        X = self._normalise(raw)  # (N, F)
        gen = torch.Generator().manual_seed(int(cfg.seed))
        self.W = competitive_learn(
            X, cfg.n_units, epochs=cfg.epochs, lr=cfg.lr, lr_final=cfg.lr_final,
            batch_size=cfg.batch_size, conscience=cfg.conscience, generator=gen, history=self.history,
        )
        return self

    # -- assignment
    def clusters(self, sentences: Sequence[RoleSentence]) -> torch.Tensor:
        """Winning unit of every scored token, (N,) long (no conscience at test time)."""
        if self.W is None:
            raise ValueError("HebbianRoleLearner is not fitted; call fit() first")
        return winners(self.features(sentences), self.W)

    def name_clusters(self, sentences: Sequence[RoleSentence]) -> dict[int, str]:
        """Name clusters by the roles of the scored tokens of labelled ``sentences``, once; then frozen.

        Every scored token of ``sentences`` is a label used (the experiment hands in exactly
        its budget). Many-to-one: a cluster no label reached takes the role of the nearest
        named unit (cosine of unit weights), so every token gets a role.
        """
        if self.cluster_to_role is not None:
            raise ValueError("clusters are already named; the mapping is frozen after the first call")
        mapping, self.n_named_from_labels = self.mapping_from(self.confusion(sentences))
        self.cluster_to_role = mapping
        return dict(mapping)

    def mapping_from(self, counts: np.ndarray) -> tuple[dict[int, str], int]:
        """(unit -> role, units named from labels) for (K, 3) role counts per unit, by ``cfg.mapping``
        (see ``name_clusters``); this learner is not changed."""
        if counts.sum() == 0:
            raise ValueError("no scored token among the naming sentences: nothing to name clusters with")
        if self.cfg.mapping == "hungarian":
            rows, cols = linear_sum_assignment(-counts)
            mapping = {int(k): ROLES[int(r)] for k, r in zip(rows, cols)}
            return mapping, len(mapping)
        named = [k for k in range(counts.shape[0]) if counts[k].sum() > 0]
        mapping = {k: ROLES[int(np.argmax(counts[k]))] for k in named}
        Wn = _unit_rows(self.W)  # (K, F)
        sim = Wn @ Wn[named].T  # (K, n_named)
        for k in range(counts.shape[0]):
            if k not in mapping:
                mapping[k] = mapping[named[int(sim[k].argmax())]]
        return mapping, len(named)

    def named_copy(self, sentences: Sequence[RoleSentence]) -> HebbianRoleLearner:
        """A copy of this learner (sharing its weights) with its clusters named afresh on ``sentences``;
        this learner, named or not, is left as it is."""
        fresh = copy.copy(self)
        fresh.cluster_to_role = None
        fresh.name_clusters(sentences)
        return fresh

    def confusion(self, sentences: Sequence[RoleSentence], win: np.ndarray | None = None) -> np.ndarray:
        """(K, 3) counts of gold roles per winning unit (``win``: the scored tokens' winners, if known)."""
        win = self.clusters(sentences).numpy() if win is None else win
        counts = np.zeros((self.cfg.n_units, len(ROLES)), dtype=np.int64)
        for k, r in zip(win, role_targets(sentences)):
            counts[k, ROLES.index(r)] += 1
        return counts

    def predict(self, sentences: Sequence[RoleSentence]) -> list[str]:
        """A role per scored token; tokens of an unnamed cluster get ``NO_ROLE`` (scored wrong)."""
        if self.W is None:
            raise ValueError("HebbianRoleLearner is not fitted; call fit() first")
        if self.cluster_to_role is None:
            raise ValueError("clusters are not named; call name_clusters() on labelled sentences first")
        return [self.cluster_to_role.get(int(k), NO_ROLE) for k in self.clusters(sentences)]


MEMBER_SEED_STRIDE = 100  # member j of a vote learns from seed + 100 j (experiment seeds stay below 100)


class HebbianVote:
    """``cfg.members`` role learners that differ only in their seed, voting per token.

    Each member is a ``HebbianRoleLearner`` with seed ``cfg.seed + 100 j`` (member 0 is the
    single learner of that seed): its word classes, unit starts and token order differ. All
    learn without labels; each is named many-to-one on the same labelled tokens; a token takes
    the role most members give it, a tie going to the earliest member. What separates one
    seed's learner from the next is variance (which word classes form, which units win), and a
    vote averages it. The members' count was picked on A-validation alone (``roles_tune``).
    """

    def __init__(self, cfg: HebbianConfig, embeddings: FixedEmbeddings) -> None:
        self.cfg = cfg
        self.members = [HebbianRoleLearner(dataclasses.replace(cfg, seed=cfg.seed + MEMBER_SEED_STRIDE * j, members=1),
                                           embeddings) for j in range(cfg.members)]

    def fit(self, sentences: Sequence[RoleSentence]) -> HebbianVote:
        for m in self.members:
            m.fit(sentences)
        return self

    def features(self, sentences: Sequence[RoleSentence]) -> torch.Tensor:
        """Every member's features of the scored tokens, side by side: (N, members * F)."""
        return torch.cat([m.features(sentences) for m in self.members], dim=1)

    def winners(self, features: torch.Tensor) -> torch.Tensor:
        """Each member's winning unit from ``features`` as ``features()`` lays them out: (members, N)."""
        parts = features.chunk(len(self.members), dim=1)
        return torch.stack([winners(f, m.W) for f, m in zip(parts, self.members)])

    def namings(self, sentences: Sequence[RoleSentence]) -> list[dict[int, str]]:
        """Each member's cluster names from labelled ``sentences``, leaving the members as they are."""
        return [m.named_copy(sentences).cluster_to_role for m in self.members]

    def name_clusters(self, sentences: Sequence[RoleSentence]) -> list[dict[int, str]]:
        """Name every member's clusters (once; then frozen); one mapping per member."""
        return [m.name_clusters(sentences) for m in self.members]

    def predict(self, sentences: Sequence[RoleSentence]) -> list[str]:
        return vote([m.predict(sentences) for m in self.members])

    def best_naming_predict(self, sentences: Sequence[RoleSentence]) -> list[str]:
        """Roles of the scored tokens of ``sentences`` with every member's units named by those same
        tokens' gold roles, then voted; the members stay as they are.

        Each member gets the best naming its mapping allows on this set (many-to-one: each unit
        its tokens' majority role), so no naming from labels elsewhere scores a member higher.
        It reads the roles it scores: a measure of how pure the units are, not a learner.
        """
        preds = []
        for m in self.members:
            win = m.clusters(sentences).numpy()  # once: the naming and the prediction share it
            mapping, _ = m.mapping_from(m.confusion(sentences, win))
            preds.append([mapping.get(int(k), NO_ROLE) for k in win])
        return vote(preds)


def vote(predictions: Sequence[Sequence[str]]) -> list[str]:
    """Per token, the role most of the prediction lists give; a tie goes to the earliest list."""
    out = []
    for col in zip(*predictions):
        counts: dict[str, int] = {}
        for r in col:
            counts[r] = counts.get(r, 0) + 1
        out.append(max(counts, key=counts.get))  # the first of the tied, in the members' order
    return out
