"""SPEN predictors: they read only past context (x̂_t depends on H_{-1..t-1}, never on H_t), and a
new one, registered, runs in SPEN."""

from __future__ import annotations

import pytest
import torch

from emaprobe.layers import PREDICTORS, Predictor, build_predictor, register_predictor
from emaprobe.layers.predictors import _shift

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


def test_only_predictor_subclasses_register():
    with pytest.raises(TypeError, match="is not a Predictor subclass"):
        register_predictor("mlp")(torch.nn.Linear)
    assert "mlp" not in PREDICTORS


def test_a_registered_predictor_runs_in_spen_as_its_own_forward(monkeypatch):
    # a user's predictor defines in_proj and finish only; SPEN's block stacks its in_proj with M's H
    # columns, and the model's one-token steps (which hand finish in_proj(h_last)) equal the parallel pass
    class Gated(Predictor):
        def __init__(self, d_model, n_scales, **_unused):
            super().__init__(d_model, n_scales)
            self.in_proj = torch.nn.Linear(n_scales * d_model, 2 * d_model, bias=False)

        def finish(self, z, first, state=None):
            a, b = _shift(z, first).chunk(2, dim=-1)
            return a * torch.sigmoid(b), None

    monkeypatch.setitem(PREDICTORS, "gated", None)  # removed again after the test
    register_predictor("gated")(Gated)
    from emaprobe.models import SPEN, SPENConfig

    torch.manual_seed(0)
    cfg = SPENConfig(vocab_size=29, d_model=D, n_layer=2, d_bottleneck=6, d_ff=32, predictor="gated", init_std=0.3)
    model = SPEN(cfg).eval()
    idx = torch.randint(0, 29, (2, 7))
    full, _ = model(idx)
    state, steps = None, []
    for t in range(7):
        logits, state = model(idx[:, t : t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)
    block = model.blocks[0]
    u, H = torch.randn(2, 7, D), torch.randn(2, 7, S, D)
    x_hat, _, c, _ = block._predict_and_mix(u, H, None, None)
    want, _ = block.predictor(H)
    torch.testing.assert_close(x_hat, want)
    torch.testing.assert_close(c, block.mix(torch.cat([u - want, H.flatten(2)], -1)), rtol=1e-5, atol=1e-6)


def test_spen_refuses_a_predictor_whose_in_proj_has_a_bias(monkeypatch):
    # the block stacks in_proj's weight with M's and would drop a bias: a named error instead
    class Biased(Predictor):
        def __init__(self, d_model, n_scales, **_unused):
            super().__init__(d_model, n_scales)
            self.in_proj = torch.nn.Linear(n_scales * d_model, d_model)

        def finish(self, z, first, state=None):
            return _shift(z, first), None

    monkeypatch.setitem(PREDICTORS, "biased", None)
    register_predictor("biased")(Biased)
    from emaprobe.models import SPEN, SPENConfig

    with pytest.raises(ValueError, match="predictor 'biased' has a bias in in_proj"):
        SPEN(SPENConfig(vocab_size=29, d_model=D, n_layer=1, d_bottleneck=6, d_ff=32, predictor="biased"))
