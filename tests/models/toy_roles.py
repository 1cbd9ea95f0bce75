"""A hand-made role language shared by the role-learner tests: active, passive with by, to-dative."""

from __future__ import annotations

import random

from emaprobe.tasks.sentence import NO_ROLE, RoleSentence

_ROLE = {"A": "AGENT", "P": "PATIENT", "R": "RECIPIENT"}


def toy_sentence(words: str, roles: str) -> RoleSentence:
    """``toy_sentence("the n1 slept", "- A -")``: one role letter (or -) per word.

    A word is a noun when it carries a role or looks like ``n<digits>`` (the toy nouns).
    """
    toks = tuple(words.split())
    rs = tuple(NO_ROLE if r == "-" else _ROLE[r] for r in roles.split())
    n = len(toks)
    noun = tuple(r != NO_ROLE or (w[:1] == "n" and w[1:].isdigit()) for w, r in zip(toks, rs))
    return RoleSentence(toks, rs, (0,) * n, (0,) * n, ("test",) * n, noun)


def toy_corpus(n: int = 150, seed: int = 0, n_nouns: int = 12) -> list[RoleSentence]:
    rng = random.Random(seed)
    nouns = [f"n{i}" for i in range(n_nouns)]
    out = []
    for _ in range(n):
        a, b, c = rng.sample(nouns, 3)
        kind = rng.randrange(3)
        if kind == 0:
            out.append(toy_sentence(f"the {a} chased the {b}", "- A - - P"))
        elif kind == 1:
            out.append(toy_sentence(f"the {b} was chased by the {a}", "- P - - - - A"))
        else:
            out.append(toy_sentence(f"the {a} gave the {b} to the {c}", "- A - - P - - R"))
    return out
