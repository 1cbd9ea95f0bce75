"""Grammatical roles of real sentences, read off gold Universal Dependencies trees.

DESIGN.md, "Grammatical role assignment", real sentences: roles come from basic
dependency relations,

* ``nsubj`` -> AGENT, ``obl:agent`` -> AGENT (the by-phrase of a passive);
* ``obj`` -> PATIENT, ``nsubj:pass`` -> PATIENT;
* ``iobj`` -> RECIPIENT, and ``obl`` with a ``case`` dependent "to" -> RECIPIENT
  (which also takes in goals, "went to the store": the rule is DESIGN's, kept as is).

Our choices where DESIGN is silent, each a field of ``UDRoleConfig`` and so saved
with the results:

* only dependents whose UPOS is NOUN, PROPN or PRON are scored (the synthetic
  grammars score nouns only; in real text pronouns are most subjects);
* a noun conjoined (``conj``) to a role-bearing noun shares its role
  ("the dog and the cat chased ..." makes both AGENT);
* tokens are syntactic words (the ones dependencies join), lower-cased: "don't" is
  the two words "do" and "n't"; empty nodes are ignored.

Clauses. A clause is headed by the root, or by a word attached through a clausal
relation: ``acl`` (``acl:relcl``), ``advcl``, ``ccomp``, ``xcomp``, ``csubj`` open a
clause one level deeper than their head's; ``parataxis``, and ``conj`` of a verb (or
of a word with its own subject or copula), open a clause at the same depth. Every
word belongs to the clause of its nearest clause-heading ancestor (itself
included), so a noun modified by a relative clause stays in the outer clause, as
in the synthetic grammars. Clause ids: 0 for the main clause, then by position of
the clause head. The construction of a clause is its head's DEPREL (``"main"`` for
the root's clause).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from emaprobe.data.conllu import Sentence, Word, find_treebank_files, read_conllu
from emaprobe.tasks.sentence import NO_ROLE, ROLES, RoleSentence
from emaprobe.utils.paths import find_data

EWT = "ud-english-ewt"


@dataclass(frozen=True)
class UDRoleConfig:
    """How dependency relations become roles and clauses."""

    deprel_roles: tuple[tuple[str, str], ...] = (
        ("nsubj", "AGENT"),
        ("obl:agent", "AGENT"),
        ("obj", "PATIENT"),
        ("nsubj:pass", "PATIENT"),
        ("iobj", "RECIPIENT"),
    )
    recipient_obl: tuple[str, ...] = ("obl",)  # these relations are RECIPIENT ...
    recipient_case: tuple[str, ...] = ("to",)  # ... when a ``case`` dependent is one of these words
    scored_upos: tuple[str, ...] = ("NOUN", "PROPN", "PRON")
    conj_shares_role: bool = True
    embedding_relations: tuple[str, ...] = ("acl", "advcl", "ccomp", "xcomp", "csubj")  # base relations
    sibling_relations: tuple[str, ...] = ("parataxis",)
    lowercase: bool = True

    def __post_init__(self) -> None:
        for deprel, role in self.deprel_roles:
            if role not in ROLES:
                raise ValueError(f"UDRoleConfig.deprel_roles: role {role!r} of {deprel!r} is not one of {list(ROLES)}")


def _direct_role(w: Word, kids: dict[int, list[Word]], table: dict[str, str], cfg: UDRoleConfig) -> str | None:
    if w.upos not in cfg.scored_upos:
        return None
    if w.deprel in table:
        return table[w.deprel]
    if w.deprel in cfg.recipient_obl:
        cases = {k.form.lower() for k in kids.get(w.id, ()) if k.base_deprel == "case"}
        if cases & set(cfg.recipient_case):
            return "RECIPIENT"
    return None


def _opens_clause(w: Word, kids: dict[int, list[Word]], cfg: UDRoleConfig) -> str | None:
    """"deeper", "sibling" or None: whether (and how) word ``w`` heads a clause of its own."""
    if w.head == 0:
        return "main"
    if w.base_deprel in cfg.embedding_relations:
        return "deeper"
    if w.base_deprel in cfg.sibling_relations:
        return "sibling"
    if w.base_deprel == "conj":
        has_pred = any(k.base_deprel in ("nsubj", "csubj", "cop") for k in kids.get(w.id, ()))
        if w.upos == "VERB" or has_pred:
            return "sibling"
    return None


def sentence_roles(sent: Sentence, config: UDRoleConfig = UDRoleConfig()) -> RoleSentence:
    """One CoNLL-U sentence as a RoleSentence over its syntactic words."""
    cfg = config
    kids = sent.children()
    by_id = {w.id: w for w in sent.words}
    table = dict(cfg.deprel_roles)

    roles = {w.id: _direct_role(w, kids, table, cfg) for w in sent.words}
    if cfg.conj_shares_role:
        for w in sent.words:
            if roles[w.id] is None and w.base_deprel == "conj" and w.upos in cfg.scored_upos:
                roles[w.id] = roles[w.head]

    kinds = {w.id: _opens_clause(w, kids, cfg) for w in sent.words}
    clause_head: dict[int, int] = {}  # word id -> id of the word heading its clause
    for w in sent.words:  # walk up to the nearest clause head; the reader rules out cycles
        node, path = w.id, []
        while node not in clause_head and not kinds[node]:
            path.append(node)
            node = by_id[node].head
        h = clause_head.setdefault(node, node) if kinds[node] else clause_head[node]
        for p in path:
            clause_head[p] = h

    depth: dict[int, int] = {}

    def depth_of(h: int) -> int:  # h heads a clause; recursion depth = clause nesting
        if h not in depth:
            kind = kinds[h]
            depth[h] = 0 if kind == "main" else depth_of(clause_head[by_id[h].head]) + (kind == "deeper")
        return depth[h]

    heads = sorted({clause_head[w.id] for w in sent.words}, key=lambda h: (kinds[h] != "main", h))
    clause_id = {h: i for i, h in enumerate(heads)}
    tokens = tuple(w.form.lower() if cfg.lowercase else w.form for w in sent.words)
    return RoleSentence(
        tokens=tokens,
        roles=tuple(roles[w.id] or NO_ROLE for w in sent.words),
        clause=tuple(clause_id[clause_head[w.id]] for w in sent.words),
        depth=tuple(depth_of(clause_head[w.id]) for w in sent.words),
        construction=tuple(
            "main" if kinds[clause_head[w.id]] == "main" else by_id[clause_head[w.id]].deprel for w in sent.words
        ),
        noun=tuple(w.upos in cfg.scored_upos for w in sent.words),
    )


def read_ud_roles(path: str | os.PathLike, config: UDRoleConfig = UDRoleConfig()) -> Iterator[RoleSentence]:
    """Stream RoleSentences from one CoNLL-U file."""
    for sent in read_conllu(path):
        yield sentence_roles(sent, config)


def treebank_folder(folder: str | os.PathLike | None = None) -> Path:
    """``folder`` if given, else ``$EMAPROBE_DATA/ud-english-ewt``."""
    return find_data(EWT, folder)


def load_ud_split(
    split: str, folder: str | os.PathLike | None = None, config: UDRoleConfig = UDRoleConfig()
) -> list[RoleSentence]:
    """All sentences of one split ("train", "dev" or "test") of a UD treebank (default: EWT)."""
    files = find_treebank_files(treebank_folder(folder))
    if split not in files:
        raise FileNotFoundError(f"{treebank_folder(folder)} has no *-ud-{split}.conllu; it has {sorted(files)}")
    return list(read_ud_roles(files[split], config))


def load_ud_splits(
    folder: str | os.PathLike | None = None, config: UDRoleConfig = UDRoleConfig()
) -> dict[str, list[RoleSentence]]:
    """Every split the treebank folder holds, by name."""
    return {split: list(read_ud_roles(p, config)) for split, p in find_treebank_files(treebank_folder(folder)).items()}
