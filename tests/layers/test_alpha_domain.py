"""One domain for the EMA coefficients: (0, 1] in the layer configs and in the ops alike."""

from __future__ import annotations

import math

import pytest
import torch

from emaprobe.layers import build_mixer, check_alphas
from emaprobe.models.spen import SPENConfig
from emaprobe.ops import ema_step, ema_traces, naive_ema_traces


@pytest.mark.parametrize("alphas", [(1.0,), (0.5, 1.0), (1e-6, 0.5)])
def test_alpha_one_is_accepted_everywhere_and_means_no_memory(alphas):
    assert check_alphas(alphas) == alphas
    SPENConfig(alphas=alphas)
    x = torch.randn(2, 7, 3)
    y, _ = build_mixer("ema", 3, alphas=alphas)(x)
    ref = naive_ema_traces(x.double(), alphas)
    assert torch.allclose(y.double(), ref, atol=1e-5)
    torch.testing.assert_close(ema_traces(x, alphas), ref.float(), atol=1e-5, rtol=1e-5)
    ema_step(x[:, 0], None, alphas)
    if alphas[-1] == 1.0 or alphas[0] == 1.0:
        s = alphas.index(1.0)
        torch.testing.assert_close(ema_traces(x, alphas)[:, :, s], x)  # h_t = x_t


@pytest.mark.parametrize("alphas", [(0.0,), (-0.1,), (1.0 + 1e-9,), (1.5,), (math.nan,), (math.inf,), (), ("x",)])
def test_alphas_out_of_domain_fail_the_same_way_everywhere(alphas):
    x = torch.randn(1, 4, 2)
    for make in (
        lambda: check_alphas(alphas),
        lambda: SPENConfig(alphas=alphas),
        lambda: build_mixer("ema", 2, alphas=alphas),
        lambda: ema_traces(x, alphas),
        lambda: ema_step(x[:, 0], None, alphas),
    ):
        with pytest.raises(ValueError, match="alphas"):
            make()
    if alphas and isinstance(alphas[0], float) and not math.isnan(alphas[0]):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            check_alphas(alphas)
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            ema_traces(x, alphas)


@pytest.mark.parametrize("mixer", ["learned_ema", "selective"])
def test_learned_decays_need_alpha_below_one_and_say_why(mixer):
    with pytest.raises(ValueError, match=r"alphas must lie in \(0, 1\) for a learned decay.*logit\(1 - alpha\)"):
        build_mixer(mixer, 4, alphas=(0.5, 1.0))
    build_mixer(mixer, 4, alphas=(0.5, 0.999))
