"""The grammar engine, the three shipped grammars, and the deduplicated role splits."""

from __future__ import annotations

import random
import textwrap

import pytest

from emaprobe.tasks.grammar import GrammarError, list_grammars, load_grammar, parse_grammar
from emaprobe.tasks.role_data import RoleDataConfig, label_counts, make_splits, sample_eval_set, sample_unique
from emaprobe.tasks.sentence import NO_ROLE, ROLES


@pytest.fixture(scope="module")
def grammars():
    return {name: load_grammar(name) for name in ("grammar_a", "grammar_b", "deep")}


def _tagged(grammar, n, seed):
    rng = random.Random(seed)
    return [grammar.sample_with_categories(rng) for _ in range(n)]


def test_shipped_grammars_are_listed_and_lexicon_is_not():
    assert list_grammars() == ["deep", "grammar_a", "grammar_b"]


def test_lexicon_sizes_match_design(grammars):
    lex = grammars["grammar_a"].lexicon
    assert len(lex["N"].words) == 40 and lex["N"].noun
    assert (len(lex["Vt"].words), len(lex["Vd"].words), len(lex["Vi"].words)) == (20, 8, 10)
    # one shared lexicon: the three grammars see the same words
    assert grammars["grammar_a"].lexicon == grammars["grammar_b"].lexicon == grammars["deep"].lexicon


def test_the_article_a_never_meets_a_vowel(grammars):
    words = grammars["grammar_a"].lexicon["N"].words + grammars["grammar_a"].lexicon["Adj"].words
    assert not [w for (w,) in words if w[0] in "aeiou"]


@pytest.mark.parametrize("name", ["grammar_a", "grammar_b", "deep"])
def test_sampling_is_deterministic_given_a_seed(grammars, name):
    g = grammars[name]
    assert g.sample_many(50, seed=7) == g.sample_many(50, seed=7)
    assert g.sample_many(50, seed=7) != g.sample_many(50, seed=8)
    assert load_grammar(name).sample_many(20, seed="x") == g.sample_many(20, seed="x")
    stream = g.iter_samples(seed=7)  # the stream starts with the list of the same seed
    assert [next(stream) for _ in range(50)] == g.sample_many(50, seed=7)


@pytest.mark.parametrize("name", ["grammar_a", "grammar_b", "deep"])
def test_vocabulary_holds_every_sampled_token_and_the_nouns(grammars, name):
    g = grammars[name]
    seen = {w for s in g.sample_many(300, seed=1) for w in s.tokens}
    assert seen <= g.vocabulary
    assert g.nouns <= g.vocabulary and seen & g.nouns


@pytest.mark.parametrize("name", ["grammar_a", "grammar_b", "deep"])
def test_nouns_carry_roles_and_nothing_else_does(grammars, name):
    g = grammars[name]
    for sent, cats in _tagged(g, 400, 1):
        for i, (role, cat) in enumerate(zip(sent.roles, cats)):
            is_noun = cat is not None and g.lexicon[cat].noun
            if not is_noun:
                assert role == NO_ROLE, (sent.text, i)
            elif role == NO_ROLE:
                # the only role-less nouns are objects of adjunct prepositions: P Det Adj* N
                j = i - 1
                while cats[j] in ("Adj", "Det"):
                    j -= 1
                assert cats[j] == "P", (sent.text, i)
            else:
                assert role in ROLES


def test_roles_are_the_clause_local_ones_in_grammar_a(grammars):
    seen = set()
    for sent, cats in _tagged(grammars["grammar_a"], 3000, 2):
        main = sent.construction[0]
        seen.add(main)
        nouns = [i for i, c in enumerate(cats) if c == "N" and sent.roles[i] != NO_ROLE and sent.clause[i] == 0]
        roles = [sent.roles[i] for i in nouns]
        if main == "passive_by":  # the surface subject is PATIENT, the noun after "by" AGENT
            assert roles == ["PATIENT", "AGENT"], sent.text
            assert sent.roles[next(i for i in nouns if i > sent.tokens.index("by"))] == "AGENT"
        elif main == "passive_short":
            assert roles == ["PATIENT"], sent.text
        elif main == "active_transitive":
            assert roles == ["AGENT", "PATIENT"], sent.text
        elif main == "ditransitive_double_object":
            assert roles == ["AGENT", "RECIPIENT", "PATIENT"], sent.text
        elif main == "ditransitive_to_dative":
            assert roles == ["AGENT", "PATIENT", "RECIPIENT"], sent.text
        elif main == "intransitive":
            assert roles == ["AGENT"], sent.text
        # inside a relative clause, the one overt noun plays its relative-clause role
        for c in set(sent.clause) - {0}:
            idx = [i for i in range(len(sent)) if sent.clause[i] == c]
            assert sent.tokens[idx[0]] == "that" and all(sent.depth[i] == 1 for i in idx)
            rc_roles = [sent.roles[i] for i in idx if sent.roles[i] != NO_ROLE]
            want = {"subject_relative": ["PATIENT"], "object_relative": ["AGENT"]}[sent.construction[idx[0]]]
            assert rc_roles == want, sent.text
    assert seen == {
        "active_transitive", "passive_by", "passive_short", "intransitive",
        "ditransitive_double_object", "ditransitive_to_dative",
    }


def test_passive_ditransitive_subject_is_recipient_in_b(grammars):
    n = 0
    for sent in grammars["grammar_b"].sample_many(500, seed=3):
        if sent.construction[0] == "passive_ditransitive":
            n += 1
            scored = [r for r in sent.roles if r != NO_ROLE]
            assert scored[:3] == ["RECIPIENT", "PATIENT", "AGENT"], sent.text
    assert n > 50


def test_grammar_b_shows_only_constructions_a_never_does(grammars):
    a, b = grammars["grammar_a"], grammars["grammar_b"]
    assert a.constructions.isdisjoint(b.constructions)
    assert {"topicalised_object", "it_cleft_subject", "it_cleft_object", "passive_ditransitive", "wh_object"} <= b.constructions
    sampled_b = {c for s in b.sample_many(1000, seed=4) for c in s.construction}
    assert sampled_b == set(b.constructions)
    # no B sentence has the surface shape (category or literal, per token) of any A sentence
    shape = lambda sent, cats: tuple(c or t for t, c in zip(sent.tokens, cats))  # noqa: E731
    shapes_a = {shape(*x) for x in _tagged(a, 5000, 5)}
    assert not any(shape(*x) in shapes_a for x in _tagged(b, 1000, 6))


def test_depths_train_at_most_one_deep_reaches_two_and_three(grammars):
    assert max(max(s.depth) for s in grammars["grammar_a"].sample_many(2000, seed=8)) == 1
    deep = grammars["deep"].sample_many(1000, seed=9)
    assert {max(s.depth) for s in deep} == {2, 3}
    constructions = {c for s in deep for c in s.construction}
    assert {"centre_object_relative", "right_subject_relative"} <= constructions
    for s in deep:  # clause ids are distinct per clause, and depth steps by one when a clause opens
        for i in range(1, len(s)):
            if s.clause[i] != s.clause[i - 1] and s.clause[i] not in s.clause[:i]:
                assert s.depth[i] == s.depth[i - 1] + 1


def test_centre_embedding_keeps_the_main_subject_in_the_main_clause(grammars):
    for s in grammars["deep"].sample_many(300, seed=10):
        if s.construction[0] == "intransitive":
            first_noun = next(i for i, r in enumerate(s.roles) if r != NO_ROLE)
            assert s.clause[first_noun] == 0 and s.roles[first_noun] == "AGENT"
            # the verb of the main clause comes last, after every relative clause closed
            assert s.clause[-1] == 0 and max(s.depth) >= 2


# ---- schema errors name the file, the rule and the field -------------------------

GOOD = """
start: S
lexicon:
  N: {noun: true, words: [dog, cat]}
  V: {forms: [base, past], words: [[see, saw]]}
rules:
  S:
    - clause: transitive
      body: [NP:AGENT, V.past, NP:PATIENT]
  NP:
    - [the, N:head]
"""


def _write(tmp_path, text, name="g.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_minimal_grammar_from_a_path(tmp_path):
    g = load_grammar(_write(tmp_path, GOOD))
    s = g.sample(random.Random(0))
    assert s.tokens[0] == "the" and s.tokens[2] == "saw"
    assert s.roles == ("-", "AGENT", "-", "-", "PATIENT")
    assert set(s.construction) == {"transitive"} and set(s.clause) == {0}


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("[NP:AGENT, V.past, NP:PATIENT]", "[Np:AGENT, V.past, NP:PATIENT]", ["rules.S[0].body[0]", "unknown symbol 'Np'"]),
        ("clause: transitive\n      body", "clause: transitive\n      weight: -1\n      body", ["rules.S[0].weight", "positive"]),
        ("[NP:AGENT, V.past, NP:PATIENT]", "[NP:AGENT, V.past:PATIENT]", ["rules.S[0].body[1]", "does not lead to a noun"]),
        ("[NP:AGENT, V.past, NP:PATIENT]", "[NP:AGENT, V.past, NP:THEME]", ["rules.S[0].body[2]", "unknown annotation 'THEME'"]),
        ("[NP:AGENT, V.past, NP:PATIENT]", "[NP:AGENT, V, NP:PATIENT]", ["rules.S[0].body[1]", "has forms"]),
        ("[NP:AGENT, V.past, NP:PATIENT]", "[NP:AGENT, V.past, NP:PATIENT, \"on\", on]", ["rules.S[0].body[4]", "True"]),
        ("- [the, N:head]", "- [the, N]", ["rules.S[0].body[0]", "does not lead to a noun"]),
        ("- clause: transitive\n", "- weight: 1\n", ["rules.S[0].clause", "start rule"]),
        ("    - [the, N:head]", "    - [the, N:head]\n    - body: [the, N:head]\n      role: AGENT", ["rules.NP[1]", "unknown field(s) ['role']"]),
        ("    - [the, N:head]", "    - [the, N:head, NP]", ["rules.NP", "can never finish"]),
        ("    - [the, N:head]", "    - [N:head, N:head]", ["rules.NP[0].body", "more than one ':head'"]),
        ("words: [dog, cat]", "words: [dog, yes]", ["lexicon.N.words[1]", "quote"]),
        ("words: [[see, saw]]", "words: [[see]]", ["lexicon.V.words[0]", "2 forms"]),
        ("start: S", "start: Q", ["'start'", "must name a rule"]),
        ("  NP:\n", "  S: [[a]]\n  NP:\n", ["g.yaml:10: not valid YAML: duplicate key 'S'"]),
        ("[NP:AGENT, V.past, NP:PATIENT]", "[NP:AGENT, V.past, NP:]", ["rules.S[0].body[2]", "is not an item"]),
        ("[NP:AGENT, V.past, NP:PATIENT]", "[NP:AGENT, V.past, the:PATIENT]", ["rules.S[0].body[2]", "only symbols"]),
        ("start: S", "start: S\nrulez: {}", ["unknown top-level field(s) ['rulez']"]),
    ],
)
def test_schema_errors_name_the_file_rule_and_field(tmp_path, old, new, expected):
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(GrammarError) as info:
        load_grammar(path)
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message, message


def test_grammar_error_is_a_value_error_and_bad_yaml_is_named(tmp_path):
    assert issubclass(GrammarError, ValueError)
    path = _write(tmp_path, "start: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_grammar(path)
    with pytest.raises(FileNotFoundError, match="grammar_a"):
        load_grammar("no_such_grammar")


def test_user_grammar_includes_the_shipped_lexicon_and_overrides_a_rule(tmp_path):
    path = _write(
        tmp_path,
        """
        include: [lexicon.yaml]
        start: S
        rules:
          S:
            - clause: fronted_by_passive
              body: [by, NPs:AGENT, ",", NPs:PATIENT, was, Vt.part]
          NPs:
            - [the, N:head]
        """,
    )
    g = load_grammar(path)
    for s in g.sample_many(20, seed=0):
        assert s.tokens[0] == "by" and s.tokens[1] == "the" and s.tokens[4] == "the"  # no adjectives: NPs overridden
        assert [r for r in s.roles if r != NO_ROLE] == ["AGENT", "PATIENT"]
    bad = _write(tmp_path, "include: [missing.yaml]\nstart: S\nrules: {S: [{clause: x, body: [a]}]}\n", "bad.yaml")
    with pytest.raises(GrammarError, match="include"):
        load_grammar(bad)


@pytest.mark.parametrize(
    "recursive",
    [
        "[N:head, and, NP, and, NP]",  # branching: the expected size is infinite
        "[NP:head, big]",  # left recursion that rarely stops: deep nesting before any token
    ],
)
def test_runaway_recursion_is_an_error_not_a_hang(recursive):
    text = GOOD.replace(
        "    - [the, N:head]", f"    - weight: 1\n      body: [the, N:head]\n    - weight: 99\n      body: {recursive}"
    )
    g = parse_grammar(text)  # recursive heads are fine for the schema
    with pytest.raises(GrammarError, match="lower the weights"):
        for seed in range(20):
            g.sample(random.Random(seed), max_tokens=64)


# ---- splits -----------------------------------------------------------------------


def test_splits_are_deterministic_disjoint_and_deduplicated():
    splits = make_splits(seed=3, n_train=600, n_val=100, n_test=200)
    again = make_splits(seed=3, n_train=600, n_val=100, n_test=200)
    assert splits == again == RoleDataConfig(seed=3, n_train=600, n_val=100, n_test=200).build()
    assert make_splits(seed=4, n_train=600, n_val=100, n_test=200).train != splits.train
    sizes = [len(x) for x in (splits.train, splits.val, splits.test_a, splits.test_b, splits.test_deep)]
    assert sizes == [600, 100, 200, 200, 200]
    train = {s.text for s in splits.train}
    assert len(train) == 600
    for name, sents in {"val": splits.val, **splits.eval_sets()}.items():
        texts = [s.text for s in sents]
        assert len(set(texts)) == len(texts), name
        assert train.isdisjoint(texts), name
    assert {s.text for s in splits.val}.isdisjoint(s.text for s in splits.test_a)
    summary = splits.summary()
    assert summary["config"]["seed"] == 3
    assert set(summary["splits"]["deep"]["depth"]) >= {"2", "3"}
    assert summary["splits"]["transfer_b"]["scored"] == label_counts(splits.test_b)["scored"] > 0


def test_eval_set_from_a_user_grammar_excludes_training_sentences(tmp_path):
    splits = make_splits(seed=0, n_train=300, n_val=50, n_test=50)
    # a grammar that overlaps A: short active transitives only
    path = _write(
        tmp_path,
        """
        include: [lexicon.yaml]
        start: S
        rules:
          S:
            - clause: active_transitive
              body: [Det, N:AGENT, Vt.past, Det, N:PATIENT]
        """,
    )
    sents = sample_eval_set(path, 200, seed=0, train=splits.train)
    train = {s.text for s in splits.train}
    assert len(sents) == 200 and not any(s.text in train for s in sents)
    tiny = _write(tmp_path, GOOD, "tiny.yaml")  # 4 distinct sentences in all
    with pytest.raises(ValueError, match="only 4 distinct"):
        sample_unique(tiny, 5, seed=0)


def test_format_sentence_brackets_clauses_and_shows_roles():
    from emaprobe.tasks.role_data import format_sentence
    from emaprobe.tasks.sentence import RoleSentence

    s = RoleSentence(
        tokens=("the", "dog", "that", "the", "cat", "chased", "barked"),
        roles=("-", "AGENT", "-", "-", "AGENT", "-", "-"),
        clause=(0, 0, 1, 1, 1, 1, 0),
        depth=(0, 0, 1, 1, 1, 1, 0),
        construction=("intransitive",) * 2 + ("object_relative",) * 4 + ("intransitive",),
    )
    assert format_sentence(s) == "the dog:AGENT [that the cat:AGENT chased] barked"


def test_the_documented_schema_example_is_a_valid_grammar_and_written_once():
    import emaprobe.tasks.grammar as grammar_module
    from emaprobe.tasks.grammar import GRAMMAR_DIR

    assert "grammars/README.md" in grammar_module.__doc__ and "Body items" not in grammar_module.__doc__
    readme = (GRAMMAR_DIR / "README.md").read_text()
    schema = readme[readme.index("```yaml") + 7 :]
    schema = schema[: schema.index("```")]
    for text in (schema,):
        g = parse_grammar(text)
        assert g.constructions == {"active_transitive"}
        assert all(s.roles[1] == "AGENT" for s in g.sample_many(10, seed=0))


def test_the_relative_clause_np_comes_from_the_shared_lexicon(tmp_path):
    # NP (with its optional relative clause) lives in lexicon.yaml, so any grammar can use it
    path = tmp_path / "mine.yaml"
    path.write_text("include: [lexicon.yaml]\nstart: S\nrules:\n  S:\n    - clause: intransitive\n"
                    "      body: [NP:AGENT, Vi.past]\n")
    g = load_grammar(path)
    assert g.constructions == {"intransitive", "subject_relative", "object_relative"}
    sents = g.sample_many(300, seed=1)
    assert any(1 in s.depth for s in sents) and all(max(s.depth) <= 1 for s in sents)
    from pathlib import Path

    assert "\n  NP:" not in Path(load_grammar("grammar_a").path).read_text()
    # grammar B includes the lexicon but never reaches NP: no relative-clause construction
    assert not {"subject_relative", "object_relative"} & load_grammar("grammar_b").constructions


def test_one_file_included_by_two_routes_is_no_conflict(tmp_path):
    # mine includes lexicon.yaml directly and through extra.yaml: the same definitions, from one file
    _write(tmp_path, "include: [lexicon.yaml]\nrules:\n  NPx:\n    - [Det, N:head]\n", "extra.yaml")
    mine = _write(tmp_path, """\
        include: [lexicon.yaml, extra.yaml]
        start: S
        rules:
          S:
            - clause: intransitive
              body: [NPx:AGENT, Vi.past]
        """, "mine.yaml")
    g = load_grammar(mine)
    assert g.sample(random.Random(0)).roles[1] == "AGENT"
    # two different files defining one name still conflict
    _write(tmp_path, "lexicon:\n  Det: [a]\n", "other.yaml")
    clash = _write(tmp_path, "include: [lexicon.yaml, other.yaml]\nstart: S\nrules: {S: [{clause: x, body: [Det]}]}\n",
                   "clash.yaml")
    with pytest.raises(GrammarError, match=r"lexicon.Det is defined by both .*lexicon.yaml and .*other.yaml"):
        load_grammar(clash)
