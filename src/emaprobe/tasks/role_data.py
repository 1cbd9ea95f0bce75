"""Train, validation and test sets for grammatical role assignment, deduplicated.

DESIGN.md, "Grammatical role assignment": the learners train on grammar A and are
scored within A (held-out sentences of the same grammar), on transfer grammar B and
on the deep-embedded grammar. No evaluation sentence occurs in training, and
validation and test share no sentence.

How the splits are drawn (all seeded, so the same seed gives the same splits):

* grammar A: one seeded stream of distinct sentences, cut into test, validation and
  train in that order, so the three are disjoint and follow the same distribution;
* every other evaluation set: its own seeded stream of distinct sentences, with any
  sentence whose text occurs in the training set dropped.

Each stream's seed is the string ``f"{seed}:{split}:{grammar name}"``; Python's
``random.Random`` hashes string seeds deterministically, whatever PYTHONHASHSEED is.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from emaprobe.tasks.grammar import Grammar, load_grammar
from emaprobe.tasks.sentence import NO_ROLE, RoleSentence


@dataclass(frozen=True)
class RoleDataConfig:
    """Sizes, grammars and seed of the role-assignment data; saved with every result."""

    seed: int = 0
    n_train: int = 4000
    n_val: int = 500
    n_test: int = 1000
    train_grammar: str = "grammar_a"
    transfer_grammar: str = "grammar_b"
    deep_grammar: str = "deep"

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test"):  # the learners fit on train, stop on val, are scored on test
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")

    def build(self) -> "RoleSplits":
        return make_splits(**asdict(self))


@dataclass(frozen=True)
class RoleSplits:
    """Grammar-A train / validation / test, and the transfer and deep test sets."""

    train: tuple[RoleSentence, ...]
    val: tuple[RoleSentence, ...]
    test_a: tuple[RoleSentence, ...]
    test_b: tuple[RoleSentence, ...]
    test_deep: tuple[RoleSentence, ...]
    config: RoleDataConfig

    def eval_sets(self) -> dict[str, tuple[RoleSentence, ...]]:
        """The three scored test sets, by the names the results use."""
        return {"within_a": self.test_a, "transfer_b": self.test_b, "deep": self.test_deep}

    def summary(self) -> dict:
        """Counts per split (sentences, tokens, roles, depths, constructions) for result files."""
        sets = {"train": self.train, "val": self.val, **self.eval_sets()}
        return {"config": asdict(self.config), "splits": {k: label_counts(v) for k, v in sets.items()}}


def _as_grammar(grammar: Grammar | str | Path) -> Grammar:
    return grammar if isinstance(grammar, Grammar) else load_grammar(grammar)


def sample_unique(
    grammar: Grammar | str | Path,
    n: int,
    seed: int | str,
    exclude: Iterable[str] = (),
    max_tries_per_sentence: int = 50,
) -> list[RoleSentence]:
    """``n`` sentences with distinct texts, none of them in ``exclude`` (sentence texts).

    Raises ValueError when the grammar cannot give that many: a tiny grammar, or one
    whose sentences all occur in ``exclude``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    g = _as_grammar(grammar)
    seen = set(exclude)
    rng = random.Random(seed)
    out: list[RoleSentence] = []
    budget = max_tries_per_sentence * n + 1000
    for _ in range(budget):
        if len(out) == n:
            break
        s = g.sample(rng)
        if s.text not in seen:
            seen.add(s.text)
            out.append(s)
    if len(out) < n:
        raise ValueError(
            f"grammar {g.name!r} ({g.path}) gave only {len(out)} distinct new sentences in {budget} draws, "
            f"{n} were asked for: the grammar generates too few distinct sentences, or most occur in training"
        )
    return out


def make_splits(
    seed: int = 0,
    n_train: int = 4000,
    n_val: int = 500,
    n_test: int = 1000,
    *,
    train_grammar: Grammar | str | Path = "grammar_a",
    transfer_grammar: Grammar | str | Path = "grammar_b",
    deep_grammar: Grammar | str | Path = "deep",
) -> RoleSplits:
    """Deduplicated train / val / within-A test / transfer-B test / deep test."""
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if value < 1:  # as RoleDataConfig, which the splits record, requires
            raise ValueError(f"{name} must be >= 1, got {value}")
    ga, gb, gd = (_as_grammar(g) for g in (train_grammar, transfer_grammar, deep_grammar))
    a = sample_unique(ga, n_test + n_val + n_train, f"{seed}:train:{ga.name}")
    test_a, val, train = a[:n_test], a[n_test : n_test + n_val], a[n_test + n_val :]
    train_texts = {s.text for s in train}
    test_b = sample_unique(gb, n_test, f"{seed}:test:{gb.name}", exclude=train_texts)
    test_deep = sample_unique(gd, n_test, f"{seed}:test:{gd.name}", exclude=train_texts)
    config = RoleDataConfig(
        seed=seed,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        train_grammar=ga.path if not isinstance(train_grammar, str) else train_grammar,
        transfer_grammar=gb.path if not isinstance(transfer_grammar, str) else transfer_grammar,
        deep_grammar=gd.path if not isinstance(deep_grammar, str) else deep_grammar,
    )
    return RoleSplits(
        train=tuple(train),
        val=tuple(val),
        test_a=tuple(test_a),
        test_b=tuple(test_b),
        test_deep=tuple(test_deep),
        config=config,
    )


def sample_eval_set(
    grammar: Grammar | str | Path,
    n: int,
    seed: int = 0,
    train: Iterable[RoleSentence] = (),
) -> list[RoleSentence]:
    """An evaluation set from any grammar (``--eval-grammar PATH.yaml``), none of it in ``train``."""
    g = _as_grammar(grammar)
    return sample_unique(g, n, f"{seed}:test:{g.name}", exclude={s.text for s in train})


def label_counts(sentences: Iterable[RoleSentence]) -> dict:
    """Sentences, tokens and scored tokens, and scored-token counts per role, depth and construction."""
    n_sent = n_tok = 0
    roles: Counter = Counter()
    depths: Counter = Counter()
    constructions: Counter = Counter()
    for s in sentences:
        n_sent += 1
        n_tok += len(s)
        for r, d, c in zip(s.roles, s.depth, s.construction):
            if r != NO_ROLE:
                roles[r] += 1
                depths[d] += 1
                constructions[c] += 1
    return {
        "sentences": n_sent,
        "tokens": n_tok,
        "scored": sum(roles.values()),
        "roles": dict(sorted(roles.items())),
        "depth": {str(k): v for k, v in sorted(depths.items())},
        "construction": dict(sorted(constructions.items())),
    }


def format_sentence(sent: RoleSentence) -> str:
    """A one-line view: scored tokens as ``word:ROLE``, embedded clauses in brackets.

    ``the dog:AGENT [that the cat:AGENT chased] barked``
    """
    out: list[str] = []
    prev_depth, prev_clause = 0, sent.clause[0] if len(sent) else 0
    for tok, role, clause, depth in zip(sent.tokens, sent.roles, sent.clause, sent.depth):
        if depth == prev_depth and clause != prev_clause and depth > 0:
            out.append("] [")  # a sibling clause at the same depth
        out.extend("]" * (prev_depth - depth))
        out.extend("[" * (depth - prev_depth))
        out.append(tok if role == NO_ROLE else f"{tok}:{role}")
        prev_depth, prev_clause = depth, clause
    out.extend("]" * prev_depth)
    text = " ".join(out)
    return text.replace("[ ", "[").replace(" ]", "]")


def label_budget(sentences: Sequence[RoleSentence], n: int | None, seed: int | str) -> list[RoleSentence]:
    """Labelled sentences holding exactly ``n`` scored tokens (``None``: all of ``sentences``).

    Sentences are taken in a seeded random order until ``n`` scored tokens are reached;
    in the last one taken, roles past the budget are blanked to ``-`` (unlabelled), so
    the labels used are exactly ``n``. The same seed gives the same labels, and a larger
    budget extends a smaller one (the curve's budgets are nested).
    """
    if n is None:
        return list(sentences)
    if n < 1:
        raise ValueError(f"a label budget must be >= 1 scored token (or None for all), got {n}")
    total = sum(r != NO_ROLE for s in sentences for r in s.roles)
    if n > total:
        raise ValueError(f"label budget {n} exceeds the {total} scored tokens available")
    order = list(range(len(sentences)))
    random.Random(f"{seed}:budget").shuffle(order)
    out: list[RoleSentence] = []
    left = n
    for i in order:
        s = sentences[i]
        k = sum(r != NO_ROLE for r in s.roles)
        if k == 0:
            continue
        if k > left:
            roles, keep = [], left
            for r in s.roles:
                if r != NO_ROLE and keep == 0:
                    roles.append(NO_ROLE)
                else:
                    keep -= r != NO_ROLE
                    roles.append(r)
            s = dataclasses.replace(s, roles=tuple(roles))
            k = left
        out.append(s)
        left -= k
        if left == 0:
            break
    return out


def unseen_tokens(sentences: Iterable[RoleSentence], train: Iterable[RoleSentence]) -> dict:
    """How many tokens (and scored tokens) of ``sentences`` are word types never seen in ``train``."""
    vocab = {w for s in train for w in s.tokens}
    n_tok = n_unseen = n_scored = n_scored_unseen = 0
    types: Counter = Counter()
    for s in sentences:
        for w, r in zip(s.tokens, s.roles):
            n_tok += 1
            new = w not in vocab
            n_unseen += new
            if new:
                types[w] += 1
            if r != NO_ROLE:
                n_scored += 1
                n_scored_unseen += new
    return {"tokens": n_tok, "unseen_tokens": n_unseen, "scored": n_scored, "unseen_scored": n_scored_unseen,
            "unseen_types": dict(types.most_common(20))}
