"""The lag-identity and MQAR generators: deterministic, right shapes, answers recoverable."""

import math

import pytest
import torch

from emaprobe.tasks.lag_identity import (
    default_lags,
    lag_targets,
    lag_tokens,
    random_embeddings,
    read_positions,
)
from emaprobe.tasks.mqar import FILLER, IGNORE, MQARConfig, answer_by_lookup, mqar_batch


def test_lag_tokens_deterministic_and_uniform():
    a, b = lag_tokens(8, 100, 16, seed=3), lag_tokens(8, 100, 16, seed=3)
    assert a.shape == (8, 100) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, lag_tokens(8, 100, 16, seed=4))
    big = lag_tokens(64, 500, 8, seed=0)
    freq = torch.bincount(big.flatten(), minlength=8).double() / big.numel()
    assert torch.allclose(freq, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01)


def test_lag_targets_name_the_lagged_token():
    tok = lag_tokens(5, 63, 11, seed=1)
    pos = read_positions(63, 20, 7)
    assert pos.tolist() == list(range(56, 63))
    for k in (0, 1, 20):
        _, y = lag_targets(tok, k, pos)
        assert y.shape == (5, 7)
        for i, t in enumerate(pos.tolist()):
            assert torch.equal(y[:, i], tok[:, t - k])


def test_lag_bad_input():
    with pytest.raises(ValueError, match="vocab"):
        lag_tokens(2, 10, 1)
    with pytest.raises(ValueError, match="too short"):
        read_positions(10, 8, 4)
    with pytest.raises(ValueError, match="outside"):
        lag_targets(lag_tokens(2, 10, 4), 9, torch.arange(5, 10))


def test_random_embeddings_unit_norm_on_average():
    e = random_embeddings(500, 64, seed=0)
    assert torch.equal(e, random_embeddings(500, 64, seed=0))
    assert abs(e.pow(2).sum(1).mean().item() - 1.0) < 0.05


def test_default_lags():
    lags = default_lags(512)
    assert lags[0] == 1 and lags[-1] == 512 and list(lags) == sorted(set(lags))
    assert all(2 ** i in lags for i in range(10))


@pytest.mark.parametrize("V,T,N", [(16, 24, 2), (64, 63, 8), (512, 500, 100)])
def test_mqar_structure_and_recoverable(V, T, N):
    cfg = MQARConfig(V, T, N)
    b = mqar_batch(cfg, 6, seed=5)
    assert b.tokens.shape == b.labels.shape == (6, T)
    assert torch.equal(b.tokens, mqar_batch(cfg, 6, seed=5).tokens)
    assert torch.equal(b.labels, mqar_batch(cfg, 6, seed=5).labels)
    keys, vals = b.tokens[:, 0 : 2 * N : 2], b.tokens[:, 1 : 2 * N : 2]
    assert ((keys >= 1) & (keys < V // 2)).all() and ((vals >= V // 2) & (vals < V)).all()
    for row in keys:
        assert len(set(row.tolist())) == N  # distinct keys: each query has one answer
    assert ((b.labels != IGNORE).sum(1) == N).all()  # every key queried once
    assert (b.labels[:, : 2 * N] == IGNORE).all()
    assert (b.tokens[:, 2 * N :][b.labels[:, 2 * N :] == IGNORE] == FILLER).all()
    # the answer is in the context: an exact lookup reproduces every label
    assert torch.equal(answer_by_lookup(b.tokens, N), b.labels)


def test_mqar_bad_config():
    with pytest.raises(ValueError, match="distinct keys"):
        MQARConfig(16, 100, 8)
    with pytest.raises(ValueError, match="seq_len"):
        MQARConfig(64, 20, 8)
    with pytest.raises(ValueError, match="even"):
        MQARConfig(15, 20, 2)


def test_mqar_entropy_of_answer_is_log_half_vocab():
    b = mqar_batch(MQARConfig(32, 64, 8), 400, seed=0)
    vals = b.labels[b.labels != IGNORE]
    p = torch.bincount(vals - 16, minlength=16).double() / vals.numel()
    h = -(p * p.log2()).sum().item()
    assert abs(h - math.log2(16)) < 0.02
