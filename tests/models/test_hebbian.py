"""HebbianRoleLearner: Oja keeps units bounded, one winner per token, frozen one-to-one naming, no labels."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from toy_roles import toy_corpus, toy_sentence

from emaprobe.models.hebbian import (
    FixedEmbeddings,
    HebbianConfig,
    HebbianRoleLearner,
    HebbianVote,
    competitive_learn,
    role_targets,
    trace_context,
    vote,
    winners,
)
from emaprobe.ops import naive_ema_traces
from emaprobe.tasks.sentence import NO_ROLE, ROLES, RoleSentence


def _learner(cfg: HebbianConfig, train: list[RoleSentence]) -> HebbianRoleLearner:
    return HebbianRoleLearner(cfg, FixedEmbeddings.from_sentences(train, cfg.dim, cfg.seed))


def test_oja_keeps_unit_norms_bounded_without_renormalising():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 16, generator=gen) * 5 + 3  # far from unit norm on purpose
    X = X / X.norm(dim=1, keepdim=True)
    W = competitive_learn(X, 4, epochs=5, lr=0.2, lr_final=0.05, batch_size=16, conscience=0.3, generator=gen)
    norms = W.norm(dim=1)
    assert torch.all((norms > 0.8) & (norms < 1.2)), norms


def test_plain_hebbian_without_oja_term_would_grow():
    # The same data under dw = lr*y*x alone grows |w| without bound: Oja's term is what bounds it.
    gen = torch.Generator().manual_seed(0)
    X = torch.nn.functional.normalize(torch.randn(500, 8, generator=gen) + 2, dim=1)
    w = X[0].clone()
    for x in X:
        w = w + 0.2 * (w @ x) * x
    assert w.norm() > 10
    W = competitive_learn(X, 1, epochs=1, lr=0.2, lr_final=0.2, batch_size=1, conscience=0.0, generator=gen)
    assert abs(float(W.norm()) - 1.0) < 0.1


def test_winner_take_all_gives_exactly_one_unit_per_token():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(300, 10, generator=gen)
    W = torch.randn(5, 10, generator=gen)
    win = winners(X, W)
    assert win.shape == (300,) and win.dtype == torch.long
    assert torch.equal(win, (X @ W.T).argmax(1))
    assert set(win.tolist()) <= set(range(5))


def test_units_find_well_separated_clusters():
    gen = torch.Generator().manual_seed(2)
    centres = torch.nn.functional.normalize(torch.randn(3, 20, generator=gen), dim=1) * 4
    labels = torch.randint(0, 3, (600,), generator=gen)
    X = torch.nn.functional.normalize(centres[labels] + torch.randn(600, 20, generator=gen) * 0.5, dim=1)
    W = competitive_learn(X, 3, epochs=5, lr=0.3, lr_final=0.01, batch_size=8, conscience=0.3, generator=gen)
    win = winners(X, W)
    # each unit is pure: one true cluster per unit
    for k in range(3):
        members = labels[win == k]
        assert len(members) > 0
        assert (members == members.mode().values).float().mean() > 0.95


def test_backward_traces_match_reversed_naive_ema_per_sentence():
    train = [toy_sentence("the a0 chased the a1", "- A - - P"), toy_sentence("the a1 slept", "- A -")]
    emb = FixedEmbeddings.from_sentences(train, 8, 0)
    cfg = HebbianConfig(dim=8, exclude_self=False)
    ids, _ = emb.ids(train)
    ctx = trace_context(emb.table[ids], cfg)  # (B, T, 2*S*D)
    S, D = len(cfg.alphas), 8
    short = emb.table[ids[1, :3]].unsqueeze(0).double()  # the short sentence without its padding
    want = naive_ema_traces(short.flip(1), cfg.alphas).flip(1).reshape(1, 3, -1)
    assert torch.allclose(ctx[1, :3, S * D :].double(), want[0], atol=1e-5)


def test_causal_variant_ignores_the_future():
    cfg = HebbianConfig(dim=8, directions="forward", exclude_self=True)
    a = [toy_sentence("the x0 chased the x1", "- A - - P")]
    b = [toy_sentence("the x0 chased the x2", "- A - - P")]
    emb = FixedEmbeddings.from_sentences(a + b, 8, 0)
    ctx_a = trace_context(emb.table[emb.ids(a)[0]], cfg)
    ctx_b = trace_context(emb.table[emb.ids(b)[0]], cfg)
    assert torch.allclose(ctx_a[:, :4], ctx_b[:, :4])  # everything before the changed last word
    both = dataclasses.replace(cfg, directions="both")
    assert not torch.allclose(trace_context(emb.table[emb.ids(a)[0]], both)[:, 1],
                              trace_context(emb.table[emb.ids(b)[0]], both)[:, 1])


def test_training_never_sees_role_labels():
    train = toy_corpus()
    scrambled = []
    rng = random.Random(5)
    for s in train:  # same scored positions, random roles
        roles = tuple(NO_ROLE if r == NO_ROLE else rng.choice(ROLES) for r in s.roles)
        scrambled.append(dataclasses.replace(s, roles=roles))
    cfg = HebbianConfig(dim=16, epochs=2, word_classes=3, n_units=4, mapping="many_to_one", min_count=1)
    a = _learner(cfg, train).fit(train)
    b = _learner(cfg, scrambled).fit(scrambled)
    assert torch.equal(a.W, b.W)
    assert torch.equal(a.classes.type_class, b.classes.type_class)


@pytest.mark.parametrize("train_on", ["nouns", "tokens"])
def test_training_never_sees_which_tokens_bear_roles(train_on):
    # Blank every role: the learner reads tokens (and noun marks) only, so nothing changes.
    train = toy_corpus()
    blank = [dataclasses.replace(s, roles=(NO_ROLE,) * len(s)) for s in train]
    cfg = HebbianConfig(dim=16, epochs=2, word_classes=3, keep_frequent=2, n_units=4, mapping="many_to_one",
                        min_count=1, train_on=train_on)
    a = _learner(cfg, train).fit(train)
    b = _learner(cfg, train).fit(blank)
    assert torch.equal(a.W, b.W)
    assert torch.equal(a.mean, b.mean)


def test_nouns_mode_needs_noun_marks_and_learns_on_non_scored_nouns_too():
    s = toy_sentence("the n1 chased the n2 near the n3", "- A - - P - - -")
    assert s.noun == (False, True, False, False, True, False, False, True)
    cfg = HebbianConfig(dim=8, n_units=3, epochs=1)
    model = _learner(cfg, [s] * 4)
    assert model.raw_contexts([s], "nouns").shape[0] == 3  # n3 (adjunct PP, role "-") included
    assert model.raw_contexts([s], "scored").shape[0] == 2
    bare = dataclasses.replace(s, noun=())
    with pytest.raises(ValueError, match="noun marks"):
        model.fit([bare] * 4)


def test_frequent_types_keep_their_own_code():
    train = toy_corpus(200, 0)
    cfg = HebbianConfig(dim=16, word_classes=3, keep_frequent=3, min_count=1, class_restarts=2, epochs=1)
    model = _learner(cfg, train).fit(train)
    kept = set(model.classes.summary()["kept"])
    assert kept == {"the", "chased", "was"} or "the" in kept and len(kept) == 3
    ids, _ = model.emb.ids(train[:3])
    codes = model.classes.encode(ids)  # (B, T, D)
    the = model.emb.stoi["the"]
    assert torch.equal(codes[ids == the][0], model.emb.table[the])
    for w in kept:
        assert int(model.classes.type_class[model.emb.stoi[w]]) == -1  # in no class
    with pytest.raises(ValueError, match="keep_frequent"):
        HebbianConfig(keep_frequent=3)


def test_weights_act_after_standardising():
    train = toy_corpus(60, 0)
    base = _learner(HebbianConfig(dim=8, epochs=1), train).fit(train)
    off = _learner(HebbianConfig(dim=8, epochs=1, self_weight=0.0, timescale_weights=(1.0, 0.5, 0.0)), train)
    off.fit(train)
    f = off.features(train[:5])  # (N, F)
    assert torch.all(f[:, :8] == 0)  # the token's own code is off
    assert torch.all(f[:, -8:] == 0)  # the slowest backward timescale is off
    assert not torch.all(base.features(train[:5])[:, :8] == 0)
    with pytest.raises(ValueError, match="timescale_weights"):
        HebbianConfig(timescale_weights=(1.0,))


def test_backward_weight_scales_only_the_backward_traces():
    train = toy_corpus(60, 0)
    D, S = 8, 3
    cfg = HebbianConfig(dim=D, epochs=1, self_weight=0.5, timescale_weights=(1.0, 0.5, 0.25))
    base = _learner(cfg, train).fit(train)
    same = _learner(dataclasses.replace(cfg, backward_weight=1.0), train).fit(train)
    f1 = base.features(train[:5])  # (N, F), F = D * (1 + 2 * S)
    assert torch.equal(same.features(train[:5]), f1)  # 1.0 is today's features, bit for bit
    assert torch.equal(same.W, base.W)
    bwd = slice(D + S * D, D + 2 * S * D)
    for w in (0.25, 0.0):
        f = _learner(dataclasses.replace(cfg, backward_weight=w), train).fit(train).features(train[:5])
        scale = torch.ones(f1.shape[1])
        scale[bwd] = w
        expect = torch.nn.functional.normalize(f1 * scale, dim=1)  # only the backward block moves
        torch.testing.assert_close(f, expect, rtol=1e-5, atol=1e-6)
    fwd_cfg = dataclasses.replace(cfg, directions="forward")
    causal = _learner(fwd_cfg, train).fit(train)
    weighted = _learner(dataclasses.replace(fwd_cfg, backward_weight=0.1), train).fit(train)
    assert torch.equal(causal.features(train[:5]), weighted.features(train[:5]))  # no backward part
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="backward_weight"):
            HebbianConfig(backward_weight=bad)


def test_hungarian_mapping_is_one_to_one_and_frozen():
    train, val = toy_corpus(200, 0), toy_corpus(60, 1)
    cfg = HebbianConfig(dim=16, n_units=5, epochs=3)
    model = _learner(cfg, train).fit(train)
    mapping = model.name_clusters(val)
    assert sorted(mapping.values()) == sorted(ROLES)  # every role named once
    assert len(set(mapping)) == 3
    before = model.predict(val)
    with pytest.raises(ValueError, match="frozen"):
        model.name_clusters(toy_corpus(60, 2))
    assert model.predict(val) == before
    # tokens of the two unnamed clusters are predicted as no role (scored wrong)
    assert set(before) <= set(ROLES) | {NO_ROLE}
    assert len(before) == len(role_targets(val))


def test_many_to_one_names_used_clusters_by_majority_and_the_rest_by_nearest_unit():
    train, val = toy_corpus(200, 0), toy_corpus(60, 1)
    model = _learner(HebbianConfig(dim=16, n_units=8, epochs=3, mapping="many_to_one"), train).fit(train)
    counts = model.confusion(val)
    mapping = model.name_clusters(val)
    assert set(mapping) == set(range(8)) and set(mapping.values()) <= set(ROLES)
    used = set(model.clusters(val).tolist())
    assert model.n_named_from_labels == len(used)
    for k in used:
        assert mapping[k] == ROLES[int(counts[k].argmax())]
    Wn = torch.nn.functional.normalize(model.W, dim=1)
    for k in set(range(8)) - used:
        nearest = max(used, key=lambda j: float(Wn[k] @ Wn[j]))
        assert mapping[k] == mapping[nearest]


def test_naming_with_one_labelled_token_names_every_cluster():
    train = toy_corpus(100, 0)
    model = _learner(HebbianConfig(dim=16, n_units=6, epochs=2, mapping="many_to_one"), train).fit(train)
    one = [toy_sentence("the n1 slept", "- A -")]
    mapping = model.name_clusters(one)
    assert set(mapping.values()) == {"AGENT"} and len(mapping) == 6
    assert set(model.predict(train)) == {"AGENT"}
    with pytest.raises(ValueError, match="no scored token"):
        _learner(HebbianConfig(dim=16, n_units=6, epochs=1, mapping="many_to_one"), train).fit(train).name_clusters(
            [toy_sentence("the n1 slept", "- - -")])


def test_learns_roles_of_a_simple_language_beyond_majority():
    train, val = toy_corpus(300, 0), toy_corpus(100, 1)
    cfg = HebbianConfig(dim=32, n_units=12, epochs=6, mapping="many_to_one", word_classes=4, self_weight=0.0,
                        batch_size=8, lr=0.3, min_count=1)
    model = _learner(cfg, train).fit(train)
    model.name_clusters(val)
    test = toy_corpus(100, 2)
    gold = role_targets(test)
    acc = sum(p == g for p, g in zip(model.predict(test), gold)) / len(gold)
    majority = max(gold.count(r) for r in ROLES) / len(gold)
    assert acc > majority + 0.2, (acc, majority)


def test_bad_config_and_unfitted_use_raise_clear_errors():
    with pytest.raises(ValueError, match="directions"):
        HebbianConfig(directions="sideways")
    with pytest.raises(ValueError, match="one-to-one"):
        HebbianConfig(n_units=2)
    with pytest.raises(ValueError, match="mapping"):
        HebbianConfig(mapping="best")
    train = toy_corpus(10)
    model = _learner(HebbianConfig(dim=8), train)
    with pytest.raises(ValueError, match="not fitted"):
        model.predict(train)
    with pytest.raises(ValueError, match="dim"):
        HebbianRoleLearner(HebbianConfig(dim=8), FixedEmbeddings.from_sentences(train, 16, 0))


def test_unknown_words_map_to_unk_and_pads_are_zero():
    emb = FixedEmbeddings(["the", "dog"], 4, 0)
    ids, lengths = emb.ids([toy_sentence("the cat", "- A"), toy_sentence("the", "-")])
    assert ids[0, 1] == emb.stoi["<unk>"] and ids[1, 1] == 0
    assert lengths.tolist() == [2, 1]
    assert torch.all(emb.table[0] == 0)


def test_vote_takes_the_most_given_role_and_a_tie_goes_to_the_earliest_list():
    assert vote([["A", "B", "C"], ["B", "B", "T"], ["B", "A", "A"]]) == ["B", "B", "C"]
    assert vote([["A"], ["T"]]) == ["A"] and vote([["T"], ["A"]]) == ["T"]
    assert vote([["A", "T"]]) == ["A", "T"]


def test_a_vote_of_one_is_the_single_learner_and_members_differ_by_seed():
    train, val, test = toy_corpus(200, 0), toy_corpus(60, 1), toy_corpus(60, 2)
    cfg = HebbianConfig(dim=16, n_units=8, epochs=2, mapping="many_to_one", word_classes=3, min_count=1, seed=4)
    emb = FixedEmbeddings.from_sentences(train, cfg.dim, 0)
    single = HebbianRoleLearner(cfg, emb).fit(train)
    single.name_clusters(val)
    one = HebbianVote(cfg, emb).fit(train)
    one.name_clusters(val)
    assert one.predict(test) == single.predict(test)
    three = HebbianVote(dataclasses.replace(cfg, members=3), emb).fit(train)
    assert [m.cfg.seed for m in three.members] == [4, 104, 204]
    assert torch.equal(three.members[0].W, single.W) and not torch.equal(three.members[1].W, single.W)
    feats = three.features(test)  # (N, 3F): the members' features side by side
    assert feats.shape == (len(role_targets(test)), 3 * single.features(test).shape[1])
    wins = three.winners(feats)
    assert torch.equal(wins[1], three.members[1].clusters(test))
    namings = three.namings(val)  # fresh copies: the members stay unnamed
    assert all(m.cluster_to_role is None for m in three.members)
    three.name_clusters(val)
    assert [m.cluster_to_role for m in three.members] == namings
    assert three.predict(test) == vote([m.predict(test) for m in three.members])
    with pytest.raises(ValueError, match="members must be >= 1"):
        HebbianConfig(members=0)


def test_best_naming_scores_one_learner_at_least_as_well_as_any_other_naming():
    train, val, test = toy_corpus(200, 0), toy_corpus(60, 1), toy_corpus(80, 2)
    cfg = HebbianConfig(dim=16, n_units=10, epochs=2, mapping="many_to_one", word_classes=3, min_count=1, seed=1)
    one = HebbianVote(cfg, FixedEmbeddings.from_sentences(train, cfg.dim, 0)).fit(train)
    gold = role_targets(test)

    def acc(pred: list[str]) -> float:
        return sum(p == g for p, g in zip(pred, gold)) / len(gold)

    best = acc(one.best_naming_predict(test))
    counts = one.members[0].confusion(test)  # (K, 3): the best many-to-one naming takes each row's largest
    assert best == pytest.approx(counts.max(1).sum() / counts.sum())
    assert all(m.cluster_to_role is None for m in one.members)  # the learner itself is not named
    for named_on in (val, train[:20], toy_corpus(30, 7)):
        assert acc(one.members[0].named_copy(named_on).predict(test)) <= best
    three = HebbianVote(dataclasses.replace(cfg, members=3), one.members[0].emb).fit(train)
    assert three.best_naming_predict(test) == vote([m.named_copy(test).predict(test) for m in three.members])
