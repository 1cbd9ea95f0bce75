"""The analytic lag-k curve: bits of x_{t-k} decodable from fixed EMA traces of random embeddings.

Setting. Tokens x_t are i.i.d. uniform over V; token v has a random embedding
e(v) ~ N(0, I/D) (``tasks.lag_identity.random_embeddings``; |e|^2 is about 1). The
fixed EMA traces at S timescales, h_{-1} = 0, are

    h_t^(s) = (1 - alpha_s) h_{t-1}^(s) + alpha_s e(x_t) = sum_{j=0}^{t} w_s(j) e(x_{t-j}),
    w_s(j) = alpha_s (1 - alpha_s)^j.

Stack the S traces: per embedding channel d, the state is the S-vector
h_{t,d} = sum_j w(j) e_d(x_{t-j}), w(j) = (w_1(j), ..., w_S(j)).

1. Signal and interference. For the target x_{t-k}, h_{t,d} = w(k) e_d(x_{t-k}) + n_d,
   where n_d = sum_{j != k} w(j) e_d(x_{t-j}) is a sum of many independent random
   codewords. We treat it as Gaussian with covariance (per channel)

       Sigma_k / D,   Sigma_k = sum_{j=0, j != k}^{t} w(j) w(j)^T      (S x S),

   the same in every channel and independent across channels (the embedding
   coordinates are i.i.d.). The sum of squared weights of the other lags is the noise.
2. SNR per channel, timescales combined. The best linear combination of the S
   traces (whitened matched filter) is z_d = w(k)^T Sigma_k^{-1} h_{t,d} / gamma_k,
   so z_d = e_d(x_{t-k}) + noise of variance 1 / (D gamma_k) against a signal of
   variance 1 / D: a per-channel SNR

       gamma_k = w(k)^T Sigma_k^{-1} w(k),

   independent of D. (For one timescale gamma_k = w(k)^2 / sum_{j != k} w(j)^2.) A
   slow timescale keeps w(k) large when fast ones have forgotten, and the whitening
   lets the traces cancel each other's interference: that is how S timescales combine.
3. Bits. z = e(x_{t-k}) + N(0, I / (D gamma_k)) is a Gaussian channel with D parallel
   real channels, input one of V random codewords. Its capacity per use is
   C_k = (D_eff / 2) log2(1 + gamma_k) bits, D_eff = min(D, V - 1): the interference
   is itself made of codewords, so it lives where the V centred codewords span and
   has the SNR gamma_k along each of those directions; a probe with a bias cannot
   use the codebook's mean direction. Under Gaussian noise the Bayes posterior is a
   softmax of functions linear in z (-|z - e(v)|^2 D gamma / 2, whose |z|^2 term
   cancels), so a linear softmax probe on the state can reach the Bayes
   cross-entropy: the probe's CE is the Bayes one plus its estimation error. We
   approximate the Bayes CE (random-coding volume argument: each wrong codeword keeps
   a fraction 2^{-C} of the posterior mass) by

       CE_k ~ log2(1 + (V - 1) 2^{-C_k}),   bits_k = log2 V - CE_k.

   This goes as C_k when C_k << log2 V and saturates at log2 V. Against a Monte Carlo
   of the exact Bayes CE on this channel (``bayes_bits_mc``; tests/probes/
   test_analytic.py) it is within 0.5 bits for V in {64, 256}, D in {16, 64}; the worst
   is at the knee, where the formula is high.

What the approximation leaves out: the interference is a mixture of codewords, not
Gaussian (a lag-0 term of weight 0.5 is one codeword, not noise); a repeated token
(probability about 1/V per lag) adds to the signal; the probe is fit on finitely many
samples. The measured curve (``experiments/probe_lag.py``) says how much these matter: at
V = D = 64, alpha = (.5, .1, .02) a linear probe recovers about half the analytic bits at
every lag (median ratio 0.53 at k < 8, 0.50 at k >= 8; 17.3 bits summed over lags against
34.4), and both curves reach zero near k = 100 (results/probes/probe_lag).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def lag_weights(alphas: Sequence[float], history: int) -> np.ndarray:
    """w (history + 1, S) float64: w[j, s] = alpha_s (1 - alpha_s)^j for lags j = 0..history."""
    a = np.asarray(alphas, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or np.any((a <= 0) | (a >= 1)):
        raise ValueError(f"alphas must be a non-empty sequence in (0, 1), got {alphas!r}")
    if history < 0:
        raise ValueError(f"history must be >= 0, got {history}")
    j = np.arange(history + 1, dtype=np.float64)[:, None]
    return a[None, :] * (1.0 - a[None, :]) ** j


def lag_snr(alphas: Sequence[float], lags: Sequence[int], history: int) -> np.ndarray:
    """gamma_k = w(k)^T Sigma_k^{-1} w(k) for each k, the state read at t = ``history``."""
    w = lag_weights(alphas, history)  # (J, S)
    total = w.T @ w  # (S, S): sum over every lag j <= t
    out = []
    for k in lags:
        if not 0 <= k <= history:
            raise ValueError(f"lag {k} outside 0..history={history}")
        wk = w[k]
        sigma = total - np.outer(wk, wk)
        # a tiny ridge: with S > 1 and few lags Sigma may be singular in float64
        sigma = sigma + 1e-18 * np.trace(total) * np.eye(len(wk))
        out.append(float(wk @ np.linalg.solve(sigma, wk)))
    return np.asarray(out)


def channel_bits(gamma: np.ndarray | float, vocab: int, dims: int) -> np.ndarray:
    """bits = log2 V - log2(1 + (V - 1) 2^{-C}), C = (dims / 2) log2(1 + gamma) (step 3 above).

    ``dims`` is the number of parallel real channels: D_eff = min(D, V - 1) for the
    EMA state (``analytic_bits``), D for an isotropic Gaussian channel (``bayes_bits_mc``).
    """
    g = np.asarray(gamma, dtype=np.float64)
    if np.any(g < 0):
        raise ValueError("gamma must be >= 0")
    if vocab < 2 or dims < 1:
        raise ValueError(f"vocab must be >= 2 and dims >= 1, got {vocab}, {dims}")
    C = 0.5 * dims * np.log2(1.0 + g)
    # log2(1 + (V-1) 2^-C) computed stably for large C
    ce = np.logaddexp2(0.0, np.log2(vocab - 1.0) - C)
    return math.log2(vocab) - ce


def analytic_bits(alphas: Sequence[float], lags: Sequence[int], vocab: int, d_model: int, history: int) -> np.ndarray:
    """The analytic curve: decodable bits of x_{t-k} for each lag k (module docstring)."""
    return channel_bits(lag_snr(alphas, lags, history), vocab, min(d_model, vocab - 1))


def bayes_bits_mc(gamma: float, vocab: int, d_model: int, n: int = 4000, seed: int = 0) -> float:
    """Monte Carlo of the exact Bayes bits on the Gaussian channel of step 3 (float64).

    A random codebook of V codewords N(0, I/D), noise N(0, I/(D gamma)), the exact
    posterior; returns log2 V - CE.
    """
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(vocab, d_model, generator=g, dtype=torch.float64) / math.sqrt(d_model)
    x = torch.randint(0, vocab, (n,), generator=g)
    z = E[x] + torch.randn(n, d_model, generator=g, dtype=torch.float64) / math.sqrt(d_model * gamma)
    logits = -(d_model * gamma / 2.0) * torch.cdist(z, E) ** 2
    ce = torch.nn.functional.cross_entropy(logits, x).item() / math.log(2.0)
    return math.log2(vocab) - ce


__all__ = ["analytic_bits", "bayes_bits_mc", "channel_bits", "lag_snr", "lag_weights"]
