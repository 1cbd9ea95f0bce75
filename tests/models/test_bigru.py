"""BiGRUTagger and its training loop: loss falls, early stopping restores the best epoch, padding does not
leak, a fixed-step run for label budgets, a private generator for the weights, and the linear probe."""

from __future__ import annotations

import pytest
import torch
from toy_roles import toy_corpus, toy_sentence

from emaprobe.models.bigru import BiGRUConfig, BiGRUTagger, role_ids
from emaprobe.models.hebbian import FixedEmbeddings
from emaprobe.train.tagger import LinearProbe, TaggerTrainConfig, train_tagger


def test_loss_falls_and_tagger_learns_the_roles():
    train, val = toy_corpus(160, 0, n_nouns=10), toy_corpus(40, 1, n_nouns=10)
    emb = FixedEmbeddings.from_sentences(train, 16, 0)
    tagger = BiGRUTagger(BiGRUConfig(dim=16, hidden=16), emb)
    train_tagger(tagger, train, val, TaggerTrainConfig(batch_size=16, max_epochs=8, patience=8, lr=2e-2), quiet=True)
    losses = [h["train_loss"] for h in tagger.history]
    assert losses[-1] < 0.5 * losses[0], losses
    assert tagger.accuracy(toy_corpus(50, 2, n_nouns=10)) > 0.9


def test_early_stopping_restores_best_validation_epoch():
    train, val = toy_corpus(100, 0, n_nouns=10), toy_corpus(30, 1, n_nouns=10)
    emb = FixedEmbeddings.from_sentences(train, 8, 0)
    tagger = BiGRUTagger(BiGRUConfig(dim=8, hidden=8), emb)
    cfg = TaggerTrainConfig(batch_size=8, max_epochs=8, patience=1, lr=3e-2)
    train_tagger(tagger, train, val, cfg, quiet=True)
    best = max(h["val_accuracy"] for h in tagger.history)
    assert tagger.best_val_accuracy == best
    assert tagger.accuracy(val) == pytest.approx(best)
    # patience 1 stops at the first epoch that does not improve
    accs = [h["val_accuracy"] for h in tagger.history]
    assert len(accs) == cfg.max_epochs or accs[-1] <= max(accs[:-1])


def test_fixed_step_training_without_validation_counts_its_steps():
    train = toy_corpus(5, 0, n_nouns=10)  # a label budget: few sentences, no dev set
    emb = FixedEmbeddings.from_sentences(train, 8, 0)
    tagger = BiGRUTagger(BiGRUConfig(dim=8, hidden=8), emb)
    train_tagger(tagger, train, None, TaggerTrainConfig(batch_size=2, steps=7, lr=1e-2), quiet=True)
    assert tagger.history == [{"steps": 7, "first_loss": tagger.history[0]["first_loss"],
                               "last_loss": tagger.history[0]["last_loss"]}]
    assert tagger.best_val_accuracy is None
    with pytest.raises(ValueError, match="no scored token"):
        train_tagger(BiGRUTagger(BiGRUConfig(dim=8, hidden=8), emb), [toy_sentence("the n1 slept", "- - -")],
                     None, TaggerTrainConfig(steps=3), quiet=True)
    with pytest.raises(ValueError, match="validation set is empty"):
        train_tagger(tagger, train, [], TaggerTrainConfig(), quiet=True)


def test_weights_follow_the_seed_and_leave_the_global_rng_alone():
    emb = FixedEmbeddings(["a", "b"], 8, 0)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = BiGRUTagger(BiGRUConfig(dim=8, hidden=8, seed=4), emb)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = BiGRUTagger(BiGRUConfig(dim=8, hidden=8, seed=4), emb)
    c = BiGRUTagger(BiGRUConfig(dim=8, hidden=8, seed=5), emb)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
        if pa.requires_grad:
            assert not torch.equal(pa, pc)
            # PyTorch's default ranges: 1/sqrt(H) = 1/sqrt(8) for the GRU, 1/sqrt(16) for the head
            assert float(pa.detach().abs().max()) <= 8**-0.5 + 1e-6


def test_padding_does_not_change_predictions():
    train = toy_corpus(50, 0, n_nouns=10)
    emb = FixedEmbeddings.from_sentences(train, 8, 0)
    tagger = BiGRUTagger(BiGRUConfig(dim=8, hidden=8), emb).eval()
    short, long = train[0], max(train, key=len)
    ids, lengths = emb.ids([short])
    alone = tagger(ids, lengths)[0, : len(short)]
    ids2, lengths2 = emb.ids([short, long])
    together = tagger(ids2, lengths2)[0, : len(short)]
    assert torch.allclose(alone, together, atol=1e-6)


def test_embeddings_are_frozen_and_shared():
    train = toy_corpus(20, 0, n_nouns=10)
    emb = FixedEmbeddings.from_sentences(train, 8, 3)
    tagger = BiGRUTagger(BiGRUConfig(dim=8, hidden=8), emb)
    train_tagger(tagger, train, train, TaggerTrainConfig(max_epochs=1), quiet=True)
    assert torch.equal(tagger.embed.weight, emb.table)
    assert not tagger.embed.weight.requires_grad


def test_role_ids_ignore_unscored_tokens_and_bad_config_raises():
    y = role_ids([toy_sentence("the n1 slept", "- A -")], 4)
    assert y.tolist() == [[-100, 0, -100, -100]]
    with pytest.raises(ValueError, match="hidden"):
        BiGRUConfig(hidden=0)
    with pytest.raises(ValueError, match="patience"):
        TaggerTrainConfig(patience=0)
    emb = FixedEmbeddings(["a"], 8, 0)
    with pytest.raises(ValueError, match="dim"):
        BiGRUTagger(BiGRUConfig(dim=16), emb)
    with pytest.raises(ValueError, match="non-empty"):
        train_tagger(BiGRUTagger(BiGRUConfig(dim=8), emb), [], [], TaggerTrainConfig(), quiet=True)


def test_linear_probe_separates_separable_roles_and_checks_shapes():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 12, generator=gen) * 3
    y = torch.randint(0, 3, (90,), generator=gen)
    X = centres[y] + torch.randn(90, 12, generator=gen)
    probe = LinearProbe(l2=1e-4).fit(X, y)
    assert (probe.predict(X) == y).float().mean() > 0.95
    one = LinearProbe().fit(X[:1], y[:1])  # a single label: predicts that role everywhere
    assert set(one.predict(X).tolist()) == {int(y[0])}
    with pytest.raises(ValueError, match="N, F"):
        LinearProbe().fit(X, y[:5])
    with pytest.raises(ValueError, match="not fitted"):
        LinearProbe().predict(X)


def test_empty_sentences_are_skipped_in_training_and_predict_nothing():
    # a grammar whose start rule may derive no token gives length-0 sentences, which GRU packing refuses
    from emaprobe.tasks.sentence import RoleSentence

    empty = RoleSentence((), (), (), (), ())
    train = toy_corpus(40, 0, n_nouns=10)
    emb = FixedEmbeddings.from_sentences(train, 8, 0)
    tagger = BiGRUTagger(BiGRUConfig(dim=8, hidden=8), emb)
    train_tagger(tagger, [empty, *train, empty], None, TaggerTrainConfig(batch_size=4, steps=5), quiet=True)
    assert tagger.history[-1]["steps"] == 5
    mixed = [empty, train[0], empty, train[1]]
    assert tagger.predict(mixed) == tagger.predict([train[0], train[1]])
    assert tagger.predict([empty, empty]) == []
    ids, lengths = emb.ids(mixed)
    logits = tagger(ids, lengths)  # (B, T, R): the empty rows are zeros, the others as alone
    assert torch.equal(logits[0], torch.zeros_like(logits[0]))
    alone = tagger(*emb.ids([train[0]]))[0]
    assert torch.allclose(logits[1, : len(train[0])], alone[: len(train[0])], atol=1e-6)
