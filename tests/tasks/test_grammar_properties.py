"""Property test: the grammar loader meets random schema mutations with a named error, never a traceback.

Starting from the shipped grammar_a (with its lexicon merged in), each example
changes one to three places of the YAML mapping: a value replaced by junk of another
type, a key deleted, an unknown key added, a symbol renamed, a role or form
misspelled. Loading the result must either succeed (and then sample) or raise
GrammarError (a ValueError) or FileNotFoundError with a message.
"""

from __future__ import annotations

import copy
import random

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from emaprobe.tasks.grammar import GRAMMAR_DIR, GrammarError, parse_grammar  # noqa: E402

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _base() -> dict:
    data = yaml.safe_load((GRAMMAR_DIR / "grammar_a.yaml").read_text(encoding="utf-8"))
    shared = yaml.safe_load((GRAMMAR_DIR / "lexicon.yaml").read_text(encoding="utf-8"))
    data.pop("include")
    data["lexicon"] = shared["lexicon"]
    data["rules"] = {**shared.get("rules", {}), **data["rules"]}
    return data


BASE = _base()

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.sampled_from(["NP:AGENT", "NP:ROLE", "Vt.past", "Vt.nope", "N:head", "Nope", "X:", ":head", "Det.",
                     "lexicon.yaml", "missing.yaml", "S", "-1", "0"]),
)


def _paths(node, prefix=()):
    """Every (container path, key) in the nested structure."""
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return
    for key, value in items:
        yield prefix, key
        yield from _paths(value, prefix + (key,))


def _mutate(data: dict, rng: random.Random, junk) -> None:
    places = list(_paths(data))
    parent_path, key = places[rng.randrange(len(places))]
    parent = data
    for k in parent_path:
        parent = parent[k]
    action = rng.choice(["replace", "delete", "add", "rename"])
    if action == "replace":
        parent[key] = junk
    elif action == "delete":
        del parent[key]
    elif action == "add":
        if isinstance(parent, dict):
            parent[str(junk)] = junk
        else:
            parent.insert(key, junk)
    elif isinstance(parent, dict):
        parent[str(junk) if junk is not None else "renamed"] = parent.pop(key)
    else:
        parent[key] = str(junk)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), junk=st.lists(JUNK, min_size=1, max_size=3))
def test_mutated_grammar_loads_or_fails_with_a_named_error(seed, junk):
    rng = random.Random(seed)
    data = copy.deepcopy(BASE)
    for j in junk:
        _mutate(data, rng, j)
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        return  # not representable as YAML: nothing to load
    try:
        grammar = parse_grammar(text, GRAMMAR_DIR / "mutated.yaml")
    except (GrammarError, FileNotFoundError) as err:
        assert str(err).strip(), "an error without a message"
        return
    grammar.sample_many(3, seed=0)


@SETTINGS
@given(text=st.text(max_size=200))
def test_random_text_loads_or_fails_with_a_named_error(text):
    try:
        parse_grammar(text, GRAMMAR_DIR / "random.yaml")
    except (GrammarError, FileNotFoundError) as err:
        assert str(err).strip()
