"""Every context mixer: shapes, step mode = parallel forward, causality, gradients, errors."""

from __future__ import annotations

import pytest
import torch

from emaprobe.layers import MIXERS, build_mixer
from emaprobe.ops import gate_inputs, naive_ema_traces

D = 8
ALL = sorted(MIXERS)


def _mixer(name: str, **kw):
    torch.manual_seed(1)
    m = build_mixer(name, D, strict=False, rank=4, key_dim=4, **kw)
    # larger than default weights so that input-dependent paths matter in the comparisons
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.normal_(0, 0.5)
    return m


def test_registry_holds_the_five_mechanisms():
    assert {"ema", "learned_ema", "selective", "gla", "attention"} <= set(MIXERS)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("T", [1, 7, 40])
def test_mixer_step_equals_parallel(name, T):
    m = _mixer(name)
    x = torch.randn(2, T, D)
    y, _ = m(x)
    assert y.shape == (2, T, m.n_scales, D)
    state, ys = None, []
    for t in range(T):
        yt, state = m(x[:, t : t + 1], state)
        ys.append(yt)
    torch.testing.assert_close(torch.cat(ys, 1), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["ema", "learned_ema", "selective"])
def test_scan_mixer_in_float64_steps_as_its_parallel_form(name):
    """A float64 mixer keeps float64 through its one-token path (the step forms once cast to float32)."""
    m = _mixer(name).double()
    x = torch.randn(2, 9, D, dtype=torch.float64)
    y, final = m(x)
    state, ys = None, []
    for t in range(x.shape[1]):
        yt, state = m(x[:, t : t + 1], state)
        ys.append(yt)
    assert state.dtype == torch.float64
    torch.testing.assert_close(torch.cat(ys, 1), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, final, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="h must have shape"):
        m(x[:1, :1].expand(3, 1, D), state[:1])


@pytest.mark.parametrize("name", ALL)
def test_mixer_chunked_equals_parallel(name):
    m = _mixer(name)
    x = torch.randn(3, 70, D)
    y, final = m(x)
    y1, s = m(x[:, :33])
    y2, s = m(x[:, 33:34], s)
    y3, s = m(x[:, 34:], s)
    torch.testing.assert_close(torch.cat([y1, y2, y3], 1), y, rtol=1e-5, atol=1e-5)
    if isinstance(final, torch.Tensor):  # scans: an O(1) float32 state, (B, S, D) or gla's (B, S, E, D)
        assert final.shape[:2] == (3, m.n_scales) and final.shape[-1] == D and final.dtype == torch.float32
        torch.testing.assert_close(s, final, rtol=1e-5, atol=1e-5)
    else:  # attention: the KV cache over every token seen
        assert final[0].shape[2] == 70 and s[0].shape[2] == 70


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("T", [1, 13])
@pytest.mark.parametrize("with_past", [False, True])
def test_traces_and_input_is_the_context_with_x_beside_it(name, T, with_past, device):
    # every mixer's y with x as slot S, and forward's state: the EMA's one scan with a memoryless
    # timescale as much as the base's concatenation; values and gradients, float64 (the CUDA kernels'
    # float32 state and float64 in: their own tolerance), odd sizes
    m = _mixer(name).double().to(device)
    x = torch.randn(3, T, D, dtype=torch.float64, device=device, requires_grad=True)
    state = None
    if with_past:
        with torch.no_grad():
            state = m(torch.randn(3, 5, D, dtype=torch.float64, device=device))[1]
    yx, st = m.traces_and_input(x, state)
    y, st_ref = m(x, state)
    assert yx.shape == (3, T, m.n_scales + 1, D)
    tol = 1e-12 if device == "cpu" else 1e-6
    torch.testing.assert_close(yx, torch.cat([y, x.unsqueeze(2)], 2), rtol=tol, atol=tol)
    assert torch.equal(yx[:, :, -1], x)  # x itself, not a trace of it
    for a, b in zip(*(s if isinstance(s, (tuple, list)) else [s] for s in (st, st_ref))):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    g = torch.randn_like(yx)
    got = torch.autograd.grad(yx, [x] + list(m.parameters()), g, allow_unused=True)
    want = torch.autograd.grad((y, x), [x] + list(m.parameters()), (g[:, :, :-1], g[:, :, -1]), allow_unused=True)
    for a, b in zip(got, want):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-10 if device == "cpu" else 1e-5, atol=tol)


@pytest.mark.parametrize("name", ALL)
def test_mixer_is_causal(name):
    m = _mixer(name)
    x = torch.randn(2, 12, D)
    y, _ = m(x)
    x2 = x.clone()
    x2[:, 6] += 3.0
    y2, _ = m(x2)
    torch.testing.assert_close(y2[:, :6], y[:, :6])
    assert (y2[:, 6] - y[:, 6]).abs().max() > 1e-3


@pytest.mark.parametrize("name", ALL)
def test_mixer_gradients_reach_input_and_parameters(name):
    m = _mixer(name)
    x = torch.randn(2, 9, D, requires_grad=True)
    y, _ = m(x)
    (y.float() ** 2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ALL)
def test_mixer_runs_in_bfloat16(name):
    m = _mixer(name)
    x = torch.randn(2, 10, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = m(x)
    ref, _ = m(x)
    assert torch.isfinite(y.float()).all()
    torch.testing.assert_close(y.float(), ref.float(), rtol=0.1, atol=0.1)


def test_ema_mixer_is_the_paper_traces():
    m = build_mixer("ema", D)
    x = torch.randn(2, 30, D, dtype=torch.float64)
    y, _ = m(x.float())
    torch.testing.assert_close(y.double(), naive_ema_traces(x, (0.5, 0.1, 0.02)), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in m.parameters()) == 0


def test_learned_ema_starts_at_the_paper_alphas_and_stays_in_unit_interval():
    m = build_mixer("learned_ema", D, alphas=(0.5, 0.1, 0.02))
    x = torch.randn(2, 25, D)
    torch.testing.assert_close(m(x)[0], build_mixer("ema", D)(x)[0], rtol=1e-5, atol=1e-6)
    a = m.decays()
    torch.testing.assert_close(a[:, 0], torch.tensor([0.5, 0.9, 0.98]))
    for theta in (-12.0, 12.0):  # far beyond any useful timescale, still strictly inside (0, 1)
        with torch.no_grad():
            m.decay_logit.fill_(theta)
        assert (m.decays() > 0).all() and (m.decays() < 1).all()


def test_selective_with_open_gate_and_no_input_dependence_is_ema():
    m = build_mixer("selective", D, rank=0)
    with torch.no_grad():
        m.gate_proj.weight.zero_()
        m.gate_bias.fill_(40.0)  # sigmoid(40) == 1 in float32: the gate is fully open
    x = torch.randn(2, 20, D)
    torch.testing.assert_close(m(x)[0], build_mixer("ema", D)(x)[0], rtol=1e-5, atol=1e-6)


def test_selective_decay_depends_on_the_input():
    m = _mixer("selective")
    x = torch.randn(1, 2, D)
    a, _ = gate_inputs(m._logits(x), x, m.decay_bias, m.gate_bias)
    assert (a[0, 0] - a[0, 1]).abs().max() > 1e-3  # two tokens, two different decays


def test_attention_mixer_matches_a_softmax_loop():
    m = _mixer("attention")
    x = torch.randn(1, 6, D)
    y, _ = m(x)
    S, E = m.n_scales, m.key_dim
    qk = m.qk(x).view(1, 6, 2, S, E)
    for t in range(6):
        for s in range(S):
            w = torch.softmax(qk[0, : t + 1, 1, s] @ qk[0, t, 0, s] / E**0.5, dim=0)  # (t+1,)
            torch.testing.assert_close(y[0, t, s], w @ x[0, : t + 1], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attention_mixer_on_cuda_equals_its_cpu_form():
    """SDPA's CUDA kernels (one value stream wider than the keys) give the CPU form's output, float32."""
    m = _mixer("attention")
    x = torch.randn(2, 37, D)
    y_cpu, _ = m(x)
    y_gpu, _ = m.cuda()(x.cuda())
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-4, atol=1e-5)


def test_unknown_mixer_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown mixer 'mamba'.*'attention'.*'ema'.*'gla'.*'learned_ema'.*'selective'"):
        build_mixer("mamba", D)


def test_unknown_argument_is_named():
    with pytest.raises(ValueError, match="takes no argument.*'rank'"):
        build_mixer("ema", D, rank=3)
    assert build_mixer("ema", D, strict=False, rank=3).n_scales == 3


@pytest.mark.parametrize("name", ALL)
def test_bad_input_fails_clearly(name):
    m = build_mixer(name, D)
    with pytest.raises(ValueError, match=r"shape \(B, T, D=8\)"):
        m(torch.randn(2, 5, D + 1))
    with pytest.raises(ValueError, match=r"shape \(B, T, D=8\)"):
        m(torch.randn(5, D))
    with pytest.raises(ValueError, match="floating-point"):
        m(torch.ones(2, 5, D, dtype=torch.long))


@pytest.mark.parametrize("alphas", [(), (0.0, 0.5), (1.5,), (float("nan"),)])
def test_bad_alphas_fail_clearly(alphas):
    with pytest.raises(ValueError, match="alphas"):
        build_mixer("ema", D, alphas=alphas)
