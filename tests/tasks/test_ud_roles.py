"""Roles, clauses and depths read off gold UD trees: hand-written sentences and real EWT."""

from __future__ import annotations

import pytest

from emaprobe.data.conllu import read_conllu
from emaprobe.tasks.role_data import label_counts
from emaprobe.tasks.sentence import ROLES
from emaprobe.tasks.ud_roles import UDRoleConfig, load_ud_split, load_ud_splits, read_ud_roles, sentence_roles


@pytest.fixture(scope="module")
def handwritten(handwritten_conllu):
    return list(read_ud_roles(handwritten_conllu))


def _scored(sent):
    return {t: r for t, r in zip(sent.tokens, sent.roles) if r != "-"}


def test_relative_clause_roles_clauses_and_depths(handwritten):
    s = handwritten[0]  # The dog that the cat chased gave the boy a bone .
    assert _scored(s) == {"dog": "AGENT", "that": "PATIENT", "cat": "AGENT", "boy": "RECIPIENT", "bone": "PATIENT"}
    # "dog" belongs to the main clause; the relative clause is clause 1, one level down
    assert s.clause == (0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0)
    assert s.depth == s.clause
    assert s.construction[2:6] == ("acl:relcl",) * 4 and s.construction[0] == "main"


def test_passive_recipient_by_to_and_agent_by_obl_agent(handwritten):
    s = handwritten[1]  # The ball wasn't sent to Mary by John .
    assert s.tokens == ("the", "ball", "was", "n't", "sent", "to", "mary", "by", "john", ".")  # syntactic words
    assert _scored(s) == {"ball": "PATIENT", "mary": "RECIPIENT", "john": "AGENT"}


def test_empty_nodes_do_not_become_tokens(handwritten):
    s = handwritten[2]  # Mary saw the dog and John [saw] the cat .
    assert len(s) == 9 and s.tokens.count("saw") == 1
    assert _scored(s) == {"mary": "AGENT", "dog": "PATIENT"}  # an orphan has no role in the basic tree


def test_conjoined_nouns_share_a_role_in_an_embedded_clause(handwritten, handwritten_conllu):
    s = handwritten[3]  # I think the dog and the cat slept .
    assert _scored(s) == {"i": "AGENT", "dog": "AGENT", "cat": "AGENT"}
    assert s.clause == (0, 0, 1, 1, 1, 1, 1, 1, 0) and max(s.depth) == 1
    assert set(s.construction[2:8]) == {"ccomp"}
    off = sentence_roles(list(read_conllu(handwritten_conllu))[3], UDRoleConfig(conj_shares_role=False))
    assert _scored(off) == {"i": "AGENT", "dog": "AGENT"}


def test_config_changes_what_is_scored(handwritten, handwritten_conllu):
    nouns_only = UDRoleConfig(scored_upos=("NOUN",))
    s = sentence_roles(next(read_conllu(handwritten_conllu)), nouns_only)
    assert "that" not in _scored(s) and _scored(s)["cat"] == "AGENT"
    with pytest.raises(ValueError, match="THEME"):
        UDRoleConfig(deprel_roles=(("obj", "THEME"),))


def test_load_split_from_any_folder(tmp_path, handwritten_treebank):
    sents = load_ud_split("test", handwritten_treebank)
    assert len(sents) == 4
    with pytest.raises(FileNotFoundError, match="no \\*-ud-train"):
        load_ud_split("train", handwritten_treebank)


def test_ewt_parses_and_has_every_role(shared_data):
    splits = load_ud_splits(shared_data / "ud-english-ewt")
    assert sorted(splits) == ["dev", "test", "train"]
    assert len(splits["train"]) > 10000 and len(splits["test"]) > 2000
    for name, sents in splits.items():
        counts = label_counts(sents)
        assert set(counts["roles"]) == set(ROLES), name
        assert all(counts["roles"][r] > 100 for r in ROLES), (name, counts["roles"])
        assert counts["depth"]["1"] > 0 and "acl:relcl" in counts["construction"]
    # EMAPROBE_DATA is enough: no folder argument
    assert len(load_ud_split("test")) == len(splits["test"])
