"""The frozen-feature linear softmax probe, and bits with confidence intervals.

    fit = fit_probe(train_x (N, F), train_y (N,), test_x, test_y, n_classes=V)
    fit.bits(h_x)        # H(x) - CE on the held-out set, in bits

The probe is a linear softmax, logits = W x + b, fit one of three ways:

- ``"lda"`` (default, closed form, about a second): the Gaussian class-conditional
  fit. Class means mu_v and one pooled, shrunk covariance C give W = C^{-1} mu_v,
  b_v = -mu_v C^{-1} mu_v / 2 + log prior_v, the Bayes decoder when the state is a
  codeword plus Gaussian interference (``probes.analytic``); a temperature on the
  logits is then fit on a fifth of the training set held out from the means.
- ``"lbfgs"``: discriminative, full-batch L-BFGS on cross-entropy plus ``l2 |W|^2``
  over standardised features, started from zero (slower: 10-60 s at 16k x 192 x 64).
- ``"best"``: both, on the same four fifths of the training rows; the one with the lower
  cross-entropy on the remaining fifth is then the probe (``fit_probe``). Neither wins everywhere: where the state
  holds a few strong codewords of the same codebook (x_t, then x_(t-1) in EMA traces),
  LDA's Gaussian model takes the strongest for the one asked for, and names x_t at
  k = 1 in nearly every row (3% accuracy, against 29% for L-BFGS); where the target is
  weak, L-BFGS from zero is the worse (k = 2: 2.41 bits against LDA's 2.87).

The features are frozen: nothing flows back into the model. CE is measured on
held-out samples, so an over-fit probe reads as fewer bits, never more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

LOG2 = math.log(2.0)


@dataclass(frozen=True)
class ProbeFit:
    ce_bits: float  # held-out cross-entropy, bits
    accuracy: float  # held-out top-1 accuracy
    marginal_bits: float  # held-out CE of the train-set marginal (the no-information baseline)
    n_train: int
    n_test: int
    method: str = ""  # the fit that was scored: "lda" or "lbfgs" ("best" names the one it chose)

    def bits(self, h_x: float | None = None) -> float:
        """Bits recovered, H(x) - CE; H(x) defaults to the marginal's held-out CE."""
        return (self.marginal_bits if h_x is None else h_x) - self.ce_bits


def _check(x: torch.Tensor, y: torch.Tensor, n_classes: int, what: str) -> None:
    if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{what}: features must be (N, F) and labels (N,), got {tuple(x.shape)}, {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{what}: no samples")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: features hold NaN or inf")
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"{what}: labels must lie in [0, {n_classes}), got {int(y.min())}..{int(y.max())}")


PROBE_METHODS = ("lda", "lbfgs", "best")


def fit_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    n_classes: int,
    method: str = "lda",
    l2: float = 1e-4,
    shrink: float = 1e-3,
    max_iter: int = 150,
) -> ProbeFit:
    """Fit a linear softmax probe on frozen features; score CE (bits) on the held-out set.

    ``method``: ``"lda"``, ``"lbfgs"`` (the module docstring), or ``"best"``: both fitted on the last four
    fifths of the training rows, and the one with the lower cross-entropy on the first fifth is the probe
    (the test rows choose nothing): LDA as fitted (its temperature came from that fifth), L-BFGS fitted
    again on every training row, so each is what its own ``method`` gives; ``ProbeFit.method`` says which."""
    _check(train_x, train_y, n_classes, "train")
    _check(test_x, test_y, n_classes, "test")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train has {train_x.shape[1]} features, test {test_x.shape[1]}")
    if method not in PROBE_METHODS:
        raise ValueError(f"unknown probe method {method!r}; choose one of {sorted(PROBE_METHODS)}")
    if method == "lda":
        return _score(*_fit_lda(train_x, train_y, n_classes, shrink)[:2], test_x, test_y, len(train_y), "lda")
    if method == "lbfgs":
        return _score(*_fit_lbfgs(train_x, train_y, n_classes, l2, max_iter), test_x, test_y, len(train_y), "lbfgs")
    # best: LDA holds out the same first fifth for its temperature, so both are judged on rows neither fitted
    lda_logits, lda_prior, lda_cal = _fit_lda(train_x, train_y, n_classes, shrink)
    n_cal = _n_cal(len(train_y))
    lb_logits, lb_prior = _fit_lbfgs(train_x[n_cal:], train_y[n_cal:], n_classes, l2, max_iter)
    with torch.no_grad():
        lb_cal = F.cross_entropy(lb_logits(train_x[:n_cal].detach().double()), train_y[:n_cal].long()).item()
    if lb_cal < lda_cal:  # chosen: fitted again on every training row, as "lbfgs" alone would be
        return _score(*_fit_lbfgs(train_x, train_y, n_classes, l2, max_iter), test_x, test_y, len(train_y), "lbfgs")
    return _score(lda_logits, lda_prior, test_x, test_y, len(train_y), "lda")


def _score(logits, prior: torch.Tensor, test_x, test_y, n_train: int, method: str) -> ProbeFit:
    # held-out CE and accuracy of a fitted probe ``logits(x) -> (N, V)``, and of its train-set marginal ``prior``
    with torch.no_grad():
        lt = logits(test_x.detach().double())
        yte = test_y.long()
        ce = F.cross_entropy(lt, yte).item() / LOG2
        acc = (lt.argmax(1) == yte).double().mean().item()
        marginal = F.cross_entropy(prior.expand(len(yte), -1), yte).item() / LOG2
    return ProbeFit(ce, acc, marginal, n_train, len(yte), method)


def _fit_lbfgs(train_x, train_y, n_classes: int, l2: float, max_iter: int):
    """Full-batch L-BFGS on cross-entropy plus ``l2 |W|^2`` over standardised features, from zero:
    -> (logits function over raw features, the add-half smoothed log marginal)."""
    xtr = train_x.detach().double()
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-12)
    xtr = (xtr - mu) / sd
    ytr = train_y.long()
    Fdim = xtr.shape[1]
    W = torch.zeros(Fdim, n_classes, dtype=torch.float64, requires_grad=True)
    counts = torch.bincount(ytr, minlength=n_classes).double() + 0.5  # add-half smoothed marginal
    prior = torch.log(counts / counts.sum())
    b = prior.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ W + b, ytr) + l2 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    W, b = W.detach(), b.detach()
    return (lambda z: ((z - mu) / sd) @ W + b), prior


def _n_cal(n: int) -> int:
    # the first fifth of the training rows: LDA's temperature, and "best"'s choice
    return max(n // 5, 1)


def _fit_lda(train_x, train_y, n_classes: int, shrink: float):
    """Shrunk LDA fitted on the last four fifths of the training rows; its temperature is calibrated on the
    first fifth, taken as it comes, unshuffled. The rows must therefore come in random order (the shipped
    callers pass i.i.d. rows): rows sorted by label leave the calibration part with few classes and give far
    too few bits. -> (logits function over raw features at the fitted temperature, the
    add-half smoothed log marginal of the fitting rows, the calibration rows' cross-entropy in nats)."""
    x = train_x.detach().double()
    y = train_y.long()
    n_cal = _n_cal(len(y))
    if len(y) - n_cal < 2:
        raise ValueError(f"the lda probe needs at least 3 training samples, got {len(y)}")
    xf, yf, xc, yc = x[n_cal:], y[n_cal:], x[:n_cal], y[:n_cal]
    mu = xf.mean(0)
    xf = xf - mu
    counts = torch.bincount(yf, minlength=n_classes).double()
    means = torch.zeros(n_classes, x.shape[1], dtype=torch.float64).index_add_(0, yf, xf)
    means = means / counts.clamp_min(1.0)[:, None]  # (V, F); an unseen class sits at the centre
    resid = xf - means[yf]
    cov = resid.T @ resid / len(yf)  # (F, F) pooled within-class covariance
    ridge = shrink * torch.trace(cov) / cov.shape[0] + 1e-12
    cov = cov + ridge * torch.eye(cov.shape[0], dtype=torch.float64)
    A = torch.linalg.solve(cov, means.T)  # (F, V)
    b = -0.5 * (means * A.T).sum(1)
    prior = torch.log((counts + 0.5) / (counts + 0.5).sum())

    def logits(z: torch.Tensor, tau: float) -> torch.Tensor:
        return tau * ((z - mu) @ A + b) + prior

    # temperature: a 1-D search on the held-out fifth (golden section over log tau)
    lo, hi = math.log(1e-3), math.log(10.0)
    f = lambda lt: F.cross_entropy(logits(xc, math.exp(lt)), yc).item()  # noqa: E731
    g = (math.sqrt(5) - 1) / 2
    a, c = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fc = f(a), f(c)
    for _ in range(40):
        if fa < fc:
            hi, c, fc = c, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, c, fc
            c = lo + g * (hi - lo)
            fc = f(c)
    tau = math.exp((lo + hi) / 2)
    return (lambda z: logits(z, tau)), prior, f(math.log(tau))


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean, std and a Student-t confidence interval over seeds (n = 1: the interval is the point)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_ci needs at least one value")
    m = float(v.mean())
    if v.size == 1:
        return {"mean": m, "std": 0.0, "lo": m, "hi": m, "n": 1}
    from scipy import stats

    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1)) * sd / math.sqrt(v.size)
    return {"mean": m, "std": sd, "lo": m - half, "hi": m + half, "n": int(v.size)}


__all__ = ["ProbeFit", "fit_probe", "mean_ci"]
