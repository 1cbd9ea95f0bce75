"""BiGRUTagger: loss falls, early stopping restores the best epoch, padding does not leak."""

from __future__ import annotations

import pytest
import torch
from toy_roles import toy_corpus, toy_sentence

from emaprobe.models.bigru import BiGRUConfig, BiGRUTagger, role_ids
from emaprobe.models.hebbian import FixedEmbeddings


def test_loss_falls_and_tagger_learns_the_roles():
    train, val = toy_corpus(200, 0, n_nouns=10), toy_corpus(50, 1, n_nouns=10)
    emb = FixedEmbeddings.from_sentences(train, 16, 0)
    tagger = BiGRUTagger(BiGRUConfig(dim=16, hidden=16, batch_size=8, max_epochs=8, patience=8, lr=1e-2), emb)
    tagger.fit(train, val, quiet=True)
    losses = [h["train_loss"] for h in tagger.history]
    assert losses[-1] < 0.5 * losses[0], losses
    assert tagger.accuracy(toy_corpus(50, 2, n_nouns=10)) > 0.9


def test_early_stopping_restores_best_validation_epoch():
    train, val = toy_corpus(100, 0, n_nouns=10), toy_corpus(30, 1, n_nouns=10)
    emb = FixedEmbeddings.from_sentences(train, 8, 0)
    tagger = BiGRUTagger(BiGRUConfig(dim=8, hidden=8, batch_size=8, max_epochs=8, patience=1, lr=3e-2), emb)
    tagger.fit(train, val, quiet=True)
    best = max(h["val_accuracy"] for h in tagger.history)
    assert tagger.best_val_accuracy == best
    assert tagger.accuracy(val) == pytest.approx(best)
    # patience 1 stops at the first epoch that does not improve
    accs = [h["val_accuracy"] for h in tagger.history]
    assert len(accs) == tagger.cfg.max_epochs or accs[-1] <= max(accs[:-1])


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
    tagger = BiGRUTagger(BiGRUConfig(dim=8, hidden=8, max_epochs=1), emb)
    tagger.fit(train, train, quiet=True)
    assert torch.equal(tagger.embed.weight, emb.table)
    assert not tagger.embed.weight.requires_grad


def test_role_ids_ignore_unscored_tokens_and_bad_config_raises():
    y = role_ids([toy_sentence("the n1 slept", "- A -")], 4)
    assert y.tolist() == [[-100, 0, -100, -100]]
    with pytest.raises(ValueError, match="hidden"):
        BiGRUConfig(hidden=0)
    emb = FixedEmbeddings(["a"], 8, 0)
    with pytest.raises(ValueError, match="dim"):
        BiGRUTagger(BiGRUConfig(dim=16), emb)
    with pytest.raises(ValueError, match="non-empty"):
        BiGRUTagger(BiGRUConfig(dim=8), emb).fit([], [], quiet=True)
