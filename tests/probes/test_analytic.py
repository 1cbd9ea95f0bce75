"""The analytic lag curve: its SNR against simulated EMA states, its bits against an exact Bayes Monte Carlo."""

import math

import numpy as np
import pytest
import torch

from emaprobe.ops import ema_traces
from emaprobe.probes.analytic import analytic_bits, bayes_bits_mc, channel_bits, lag_snr, lag_weights
from emaprobe.probes.linear import fit_probe, mean_ci
from emaprobe.tasks.lag_identity import lag_targets, lag_tokens, random_embeddings, read_positions

ALPHAS = (0.5, 0.1, 0.02)


def test_lag_weights_sum_to_one_over_long_history():
    w = lag_weights(ALPHAS, 2000)
    assert w.shape == (2001, 3)
    np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-12)


def test_single_timescale_snr_closed_form():
    a, k, t = 0.1, 5, 400
    w = a * (1 - a) ** np.arange(t + 1)
    expect = w[k] ** 2 / (np.sum(w**2) - w[k] ** 2)
    assert lag_snr((a,), [k], t)[0] == pytest.approx(expect, rel=1e-9)


@pytest.mark.parametrize("k", [1, 8, 40])
def test_snr_matches_simulated_ema_states(k):
    """gamma_k against the residual of the whitened matched filter on real ``ema_traces`` output."""
    V, D, T = 64, 64, 260
    E = random_embeddings(V, D, seed=0).double()
    Ec = E - E.mean(0)  # the codebook mean is a constant offset a probe's bias absorbs
    tok = lag_tokens(256, T, V, seed=1)
    h = ema_traces(Ec[tok], ALPHAS).double()  # (N, T, S, D)
    t = T - 1
    w = torch.tensor(lag_weights(ALPHAS, t))
    total = w.T @ w
    wk = w[k]
    g = float(wk @ torch.linalg.solve(total - torch.outer(wk, wk), wk))
    f = torch.linalg.solve(total - torch.outer(wk, wk), wk) / g
    z = torch.einsum("nsd,s->nd", h[:, t], f)
    resid = z - Ec[tok[:, t - k]]
    g_mc = 1.0 / (resid.var().item() * D)
    assert g == pytest.approx(lag_snr(ALPHAS, [k], t)[0], rel=1e-9)
    assert g_mc == pytest.approx(g, rel=0.1)


@pytest.mark.parametrize("V,D", [(64, 64), (256, 64), (64, 16)])
@pytest.mark.parametrize("gamma", [0.003, 0.03, 0.3])
def test_channel_bits_near_bayes_monte_carlo(V, D, gamma):
    """The random-coding approximation against the exact Bayes CE on the Gaussian channel."""
    mc = bayes_bits_mc(gamma, V, D, n=3000, seed=0)
    approx = float(channel_bits(gamma, V, D))  # isotropic channel: D channels
    assert abs(mc - approx) < 0.5


def test_analytic_bits_bounded_and_decreasing_at_long_lags():
    lags = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    b = analytic_bits(ALPHAS, lags, 64, 64, 600)
    assert (b >= 0).all() and (b <= math.log2(64) + 1e-9).all()
    assert np.all(np.diff(b[3:]) <= 1e-12)
    assert b[-1] < 0.01


def test_probe_bits_on_ema_states_below_analytic_and_positive():
    """Measured bits at a short lag are positive and do not beat the H(x) ceiling."""
    V, D, T = 16, 32, 80
    E = random_embeddings(V, D, seed=0)
    pos = read_positions(T, 16, 16)
    tr, te = lag_tokens(256, T, V, seed=1), lag_tokens(64, T, V, seed=2)
    ftr = ema_traces(E[tr], ALPHAS)[:, pos].flatten(2).flatten(0, 1)
    fte = ema_traces(E[te], ALPHAS)[:, pos].flatten(2).flatten(0, 1)
    _, ytr = lag_targets(tr, 2, pos)
    _, yte = lag_targets(te, 2, pos)
    bits = fit_probe(ftr, ytr.reshape(-1), fte, yte.reshape(-1), V).bits(math.log2(V))
    assert 0.5 < bits <= math.log2(V)


def test_probe_rejects_bad_input():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="labels"):
        fit_probe(x, torch.full((10,), 5), x, torch.zeros(10, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="NaN"):
        fit_probe(x * float("nan"), torch.zeros(10, dtype=torch.long), x, torch.zeros(10, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="probe method"):
        fit_probe(x, torch.zeros(10, dtype=torch.long), x, torch.zeros(10, dtype=torch.long), 4, method="svm")


def test_mean_ci():
    r = mean_ci([1.0, 2.0, 3.0])
    assert r["mean"] == 2.0 and r["lo"] < 2.0 < r["hi"] and r["n"] == 3
    assert mean_ci([4.0])["lo"] == 4.0
