"""The linear probe's three fits: ``best`` chooses between LDA and L-BFGS on held-out training rows."""

import math

import pytest
import torch

from emaprobe.probes.linear import fit_probe


def two_codewords(noise: float, seed: int = 0, V: int = 16, D: int = 16, n_train: int = 3000, n_test: int = 1000):
    # the state of EMA traces at alphas 0.5 and 0.1 after x_(t-1) = c and x_t = a, both from one codebook, plus
    # Gaussian noise for older tokens; the probe names c. -> train x, y, test x, y
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(V, D, generator=g, dtype=torch.float64) / math.sqrt(D)

    def rows(n):
        a, c = torch.randint(0, V, (n,), generator=g), torch.randint(0, V, (n,), generator=g)
        x = torch.cat([0.5 * E[a] + 0.25 * E[c], 0.1 * E[a] + 0.09 * E[c]], 1)
        return x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64), c

    return (*rows(n_train), *rows(n_test))


def test_best_takes_lbfgs_where_lda_names_the_stronger_codeword():
    # LDA models the present token's codeword as Gaussian noise and names it for the previous one, at about
    # half of L-BFGS's accuracy; ``best`` sees that on its held-out fifth
    xtr, ytr, xte, yte = two_codewords(noise=0.03)
    lda = fit_probe(xtr, ytr, xte, yte, 16, method="lda")
    best = fit_probe(xtr, ytr, xte, yte, 16, method="best")
    assert lda.method == "lda" and best.method == "lbfgs"
    assert best.accuracy > lda.accuracy + 0.1
    assert best.bits() > lda.bits()
    # chosen on the held-out fifth, then fitted on every training row: what "lbfgs" alone gives
    alone = fit_probe(xtr, ytr, xte, yte, 16, method="lbfgs")
    assert (best.ce_bits, best.accuracy, best.n_train) == (alone.ce_bits, alone.accuracy, len(ytr))


def test_best_keeps_lda_where_it_is_the_better_fit():
    xtr, ytr, xte, yte = two_codewords(noise=0.01)
    lda = fit_probe(xtr, ytr, xte, yte, 16, method="lda")
    best = fit_probe(xtr, ytr, xte, yte, 16, method="best")
    assert best.method == "lda"
    assert (best.ce_bits, best.accuracy, best.marginal_bits) == (lda.ce_bits, lda.accuracy, lda.marginal_bits)


def test_best_is_chosen_without_the_test_rows():
    # the choice is made before the test rows are seen: a test set whose labels say nothing changes the score,
    # never which fit was scored
    xtr, ytr, xte, yte = two_codewords(noise=0.03)
    real = fit_probe(xtr, ytr, xte, yte, 16, method="best")
    shuffled = fit_probe(xtr, ytr, xte, yte[torch.randperm(len(yte), generator=torch.Generator().manual_seed(1))],
                         16, method="best")
    assert real.method == shuffled.method == "lbfgs"
    assert shuffled.bits() < real.bits()


def test_unknown_method_names_the_choices():
    x = torch.randn(10, 3)
    y = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match=r"'best', 'lbfgs', 'lda'"):
        fit_probe(x, y, x, y, 4, method="svm")
