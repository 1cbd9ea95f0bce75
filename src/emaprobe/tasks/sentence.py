"""The role-annotated sentence every structure task produces and every role learner reads."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("AGENT", "PATIENT", "RECIPIENT")
NO_ROLE = "-"


@dataclass(frozen=True)
class RoleSentence:
    """One sentence, a token a position; all tuples have the same length.

    tokens:       word forms, lower-cased
    roles:        AGENT, PATIENT, RECIPIENT, or "-" for tokens that are not scored
    clause:       id of the clause the token sits in (0 = main clause)
    depth:        embedding depth of that clause (0 = main clause)
    construction: name of the construction that produced the token's clause
    noun:         whether the token is a noun (a word class, not a role: adjunct-PP nouns
                  are nouns with role "-"); empty when the source does not say. Role
                  learners may train on all nouns; they never see which nouns are scored.
    """

    tokens: tuple[str, ...]
    roles: tuple[str, ...]
    clause: tuple[int, ...]
    depth: tuple[int, ...]
    construction: tuple[str, ...]
    noun: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if self.noun and len(self.noun) != n:
            raise ValueError(f"RoleSentence.noun has {len(self.noun)} entries for {n} tokens (or give none)")
        for name in ("roles", "clause", "depth", "construction"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"RoleSentence.{name} has {len(getattr(self, name))} entries for {n} tokens")
        for r in self.roles:
            if r != NO_ROLE and r not in ROLES:
                raise ValueError(f"unknown role {r!r}; choose one of {list(ROLES) + [NO_ROLE]}")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        return " ".join(self.tokens)
