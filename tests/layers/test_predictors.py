"""SPEN predictors read only past context: x̂_t depends on H_{-1..t-1}, never on H_t."""

from __future__ import annotations

import pytest
import torch

from emaprobe.layers import PREDICTORS, build_predictor

D, S = 8, 3


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_prediction_ignores_the_current_context(name):
    p = build_predictor(name, D, S, n_head=2)
    H = torch.randn(2, 10, S, D)
    x_hat, _ = p(H)
    H2 = H.clone()
    H2[:, 4] += 5.0
    x_hat2, _ = p(H2)
    torch.testing.assert_close(x_hat2[:, :5], x_hat[:, :5])  # x̂_0..x̂_4 read H_{<=3}
    assert (x_hat2[:, 5] - x_hat[:, 5]).abs().max() > 1e-3  # x̂_5 reads H_4
    assert x_hat[:, 0].abs().max() == 0  # an empty past predicts nothing


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_prediction_continues_from_h_last(name):
    p = build_predictor(name, D, S, n_head=2)
    H = torch.randn(2, 9, S, D)
    full, _ = p(H)
    a, st = p(H[:, :4])
    b, _ = p(H[:, 4:], H[:, 3], st)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-5, atol=1e-6)


def test_linear_predictor_is_one_matrix_on_the_previous_context():
    p = build_predictor("linear", D, S)
    H = torch.randn(1, 4, S, D)
    x_hat, _ = p(H)
    torch.testing.assert_close(x_hat[0, 2], p.proj.weight @ H[0, 1].flatten())


def test_unknown_predictor_and_bad_shapes_fail_clearly():
    with pytest.raises(ValueError, match=r"unknown predictor 'mlp'; choose one of \['attention', 'linear'\]"):
        build_predictor("mlp", D, S)
    p = build_predictor("linear", D, S)
    with pytest.raises(ValueError, match=r"H must have shape \(B, T, S=3, D=8\)"):
        p(torch.randn(2, 4, S * D))
    with pytest.raises(ValueError, match="not divisible by n_head"):
        build_predictor("attention", D, S, n_head=3)
