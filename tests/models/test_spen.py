"""SPEN as a whole: step mode = parallel, past-only predictor, sparsity, gradients,
sizes, configs and errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from emaprobe.layers import MIXERS, PREDICTORS
from emaprobe.models import MODEL_CONFIGS, SPEN, SPENConfig, build_model, describe, get_config
from emaprobe.models.common import config_from_dict

V = 37


def small_spen(mixer="ema", predictor="linear", **kw) -> SPEN:
    torch.manual_seed(0)
    cfg = SPENConfig(
        vocab_size=V, d_model=16, n_layer=2, d_bottleneck=12, d_ff=64, n_head=2, key_dim=4, mixer_rank=4,
        mixer=mixer, predictor=predictor, init_std=0.3, **kw,
    )
    return SPEN(cfg).eval()


COMBOS = [(m, p) for m in sorted(MIXERS) for p in sorted(PREDICTORS)]


@pytest.mark.parametrize(("mixer", "predictor"), COMBOS)
def test_spen_step_equals_parallel(mixer, predictor):
    # B T = 51 >= 4 d_b: with the EMA and the linear predictor the parallel call folds P into M, and the
    # one-token steps do not
    model = small_spen(mixer, predictor)
    assert model.blocks[0].folds(51) == ((mixer, predictor) == ("ema", "linear")) and not model.blocks[0].folds(3)
    idx = torch.randint(0, V, (3, 17))
    full, _ = model(idx)
    assert full.shape == (3, 17, V)
    state, steps = None, []
    for t in range(17):
        logits, state = model(idx[:, t : t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)
    a, st = model(idx[:, :6])
    b, _ = model(idx[:, 6:], st)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("mixer", "predictor"), COMBOS)
def test_spen_gradients_reach_every_parameter(mixer, predictor):
    model = small_spen(mixer, predictor).train()
    idx = torch.randint(0, V, (2, 11))
    logits, _ = model(idx)
    torch.nn.functional.cross_entropy(logits.reshape(-1, V), idx.roll(-1, 1).reshape(-1)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("predictor", sorted(PREDICTORS))
def test_predictor_sees_only_past_traces(predictor):
    block = small_spen("ema", predictor).blocks[0]
    x = torch.randn(2, 10, 16)
    _, _, parts = block(x, return_parts=True)
    x2 = x.clone()
    x2[:, 5] += 3.0
    _, _, parts2 = block(x2, return_parts=True)
    torch.testing.assert_close(parts2["x_hat"][:, :6], parts["x_hat"][:, :6])  # x̂_5 ignores x_5
    assert (parts2["x_hat"][:, 6] - parts["x_hat"][:, 6]).abs().max() > 1e-4  # x̂_6 reads it
    torch.testing.assert_close(parts["e"], parts["u"] - parts["x_hat"])


def test_block_follows_the_design_order_and_shapes():
    model = small_spen()
    parts = model.block_parts(torch.randint(0, V, (2, 7)))
    assert len(parts) == 2
    p = parts[0]
    assert p["u"].shape == (2, 7, 16) and p["H"].shape == (2, 7, 3, 16)
    assert p["c"].shape == (2, 7, 12) and p["y"].shape == (2, 7, 16)
    rms = p["u"].pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-3, atol=1e-3)  # u = RMSNorm(x)
    k = model.config.k_active
    assert k == math.ceil(0.06 * 64) == 4
    hidden = model.blocks[0].ffn.hidden(p["c"])
    assert ((hidden != 0).sum(-1) == k).all()


@pytest.mark.parametrize("predictor", sorted(PREDICTORS))
@pytest.mark.parametrize("T", [1, 9])
@pytest.mark.parametrize("with_past", [False, True])
def test_stacked_context_product_equals_predictor_then_concatenated_mix(predictor, T, with_past):
    # the block reads vec(H) once, with the predictor's in_proj and M's H columns stacked in one
    # product: the same x̂, e, c and predictor state, and the same gradients to u, H, h_last and
    # every weight, as the predictor module followed by nn.Linear on cat([e, vec(H)]); float64,
    # odd sizes, with and without a past (h_last and the attention predictor's cache)
    block = small_spen(predictor=predictor).blocks[0].double()
    torch.manual_seed(1)
    u = torch.randn(3, T, 16, dtype=torch.float64, requires_grad=True)
    H = torch.randn(3, T, 3, 16, dtype=torch.float64, requires_grad=True)
    h_last, pred_state = None, None
    if with_past:
        with torch.no_grad():
            _, pred_state = block.predictor(torch.randn(3, 5, 3, 16, dtype=torch.float64))
        h_last = torch.randn(3, 3, 16, dtype=torch.float64, requires_grad=True)
    x_hat, e, c, st = block._predict_and_mix(u, H, h_last, pred_state)
    x_ref, st_ref = block.predictor(H, h_last, pred_state)
    e_ref = u - x_ref
    c_ref = block.mix(torch.cat([e_ref, H.flatten(2)], dim=-1))
    for a, b in ((x_hat, x_ref), (e, e_ref), (c, c_ref)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if predictor == "attention":
        for a, b in zip(st, st_ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    wrt = [u, H] + ([h_last] if with_past else []) + list(block.predictor.parameters()) + [block.mix.weight]
    gc, gx = torch.randn_like(c), torch.randn_like(x_hat)
    got = torch.autograd.grad((c, x_hat), wrt, (gc, gx))
    want = torch.autograd.grad((c_ref, x_ref), wrt, (gc, gx))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _block_grads(block, x, state, return_parts):
    out, st = block(x, state, return_parts=return_parts)[:2]
    g_out, g_st = torch.randn_like(out, generator=torch.Generator().manual_seed(2)), torch.ones_like(st["mixer"])
    wrt = [x] + ([state["mixer"]] if state else []) + list(block.parameters())
    grads = torch.autograd.grad((out, st["mixer"]), wrt, (g_out, g_st), allow_unused=True)
    return out, st, grads


@pytest.mark.parametrize("with_past", [False, True])
def test_folded_block_equals_predictor_then_mix(with_past):
    # the EMA with the linear predictor folds P into M (``_fold_and_mix``): the block's output, state and
    # the gradients to x, the incoming state and every weight equal the unfolded path's (``return_parts``
    # runs it), float64, at a call long enough to fold (B T = 51 >= 4 d_b = 48), with and without a past.
    # The past is one tensor, the mixer's state and h_last both, as a block's own state is in float64: the
    # fold reads H_{-1} through the mixer's state, the unfolded path through h_last
    block = small_spen().blocks[0].double()
    assert block.folds(3 * 17) and not block.folds(47)
    torch.manual_seed(1)
    x = torch.randn(3, 17, 16, dtype=torch.float64, requires_grad=True)
    state = None
    if with_past:
        with torch.no_grad():
            _, st = block(torch.randn(3, 5, 16, dtype=torch.float64))
        assert torch.equal(st["mixer"], st["h_last"])
        h0 = st["mixer"].requires_grad_()
        state = {"mixer": h0, "h_last": h0, "pred": None}
    out, st, got = _block_grads(block, x, state, return_parts=False)
    ref, st_ref, want = _block_grads(block, x, state, return_parts=True)
    torch.testing.assert_close(out, ref, rtol=1e-11, atol=1e-11)
    # the folded path's state comes from one scan over S + 1 timescales (x as the memoryless one), the
    # unfolded path's from a scan over S: the same sums, but the CPU scan's chunk products have another
    # shape, and a BLAS may round them in another order (MKL on an AVX-512 AMD EPYC: 3e-15 relative)
    for key in ("mixer", "h_last"):
        torch.testing.assert_close(st[key], st_ref[key], rtol=1e-13, atol=1e-15)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_fold_needs_a_fixed_recurrence_a_shifted_product_and_decays_from_one_half():
    assert small_spen().blocks[0].fold == ((2.0, 1 / 0.9, 1 / 0.98), (1.0, 0.1 / 0.9, 0.02 / 0.98))
    assert small_spen(alphas=(0.5, 0.3)).blocks[0].fold is not None
    assert small_spen(alphas=(0.6, 0.1)).blocks[0].fold is None  # 1 / a = 2.5 would scale H's rounding more
    assert small_spen(predictor="attention").blocks[0].fold is None
    for mixer in sorted(set(MIXERS) - {"ema"}):
        assert small_spen(mixer).blocks[0].fold is None, mixer
        assert not small_spen(mixer).blocks[0].folds(10**6), mixer


def test_fold_saves_the_predictors_products():
    # forward + backward FLOPs of one block at B T = N positions, folded and not: the fold removes the
    # predictor's S D^2 a token from the forward product and both backward ones (6 S D^2 N FLOPs) and
    # adds the product G = M_e W_P over the weights and its two backward products (6 d_b S D^2). The
    # naive scan: the chunked CPU one counts matrix products within chunks, one timescale more folded
    from torch.utils.flop_counter import FlopCounterMode

    block = small_spen(scan_backend="naive").blocks[0]
    S, D, d_b, N = 3, 16, 12, 3 * 29

    def flops(return_parts):
        x = torch.randn(3, 29, D, requires_grad=True)
        with FlopCounterMode(display=False) as fc:
            out = block(x, return_parts=return_parts)[0]
            out.sum().backward()
        return fc.get_total_flops()

    assert flops(True) - flops(False) == 6 * S * D * D * N - 6 * d_b * S * D * D


@pytest.mark.parametrize(("D", "d_b", "std"), [(16, 12, 0.3), (64, 48, 0.02)])
def test_folded_bottleneck_rounds_like_the_unfolded_one_in_bf16(D, d_b, std):
    # under bf16 autocast both paths round; the folded c is as close to the float64 c as the unfolded c
    # is, within a factor of 2 (the fold scales H's rounding by up to 1 / a = 2). Compared at c: the
    # top-k after it turns any rounding into a different choice of units for a few tokens
    from emaprobe.models.spen import _in_autocast_dtype

    torch.manual_seed(0)
    cfg = SPENConfig(vocab_size=V, d_model=D, n_layer=1, d_bottleneck=d_b, d_ff=4 * D, init_std=std)
    blk = SPEN(cfg).blocks[0]
    u = blk.norm(torch.randn(4, 257, D)).detach()

    def c_of(fold: bool, bf16: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if fold:
                return blk._fold_and_mix(blk.mixer.traces_and_input(_in_autocast_dtype(u))[0]).double()
            H, _ = blk.mixer(_in_autocast_dtype(u))
            return blk._predict_and_mix(u, H, None, None)[2].double()

    got = {fold: c_of(fold, True) for fold in (False, True)}
    blk.double()
    u = u.double()
    truth = c_of(False, False)
    err = {fold: ((c - truth).norm() / truth.norm()).item() for fold, c in got.items()}
    assert 0 < err[True] < 0.01 and err[True] < 2 * err[False], err


def test_no_positional_encoding_and_tied_head():
    model = small_spen()
    assert not any("pos" in n for n, _ in model.named_parameters())
    assert sum(1 for p in model.parameters() if p.shape == (V, 16)) == 1


def test_bf16_autocast_forward_backward():
    model = small_spen("selective").train()
    idx = torch.randint(0, V, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(idx)
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, V), idx.reshape(-1))
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_autocast_mixer_reads_and_writes_bf16(mixer):
    """Under autocast the mixer gets u in bf16 and H comes out bf16, with no float32 H cast
    twice more before P and M; without autocast the block is untouched (u passes as itself)."""
    from emaprobe.models.spen import _in_autocast_dtype

    model = small_spen(mixer).train()
    idx = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(0))
    u = torch.randn(2, 9, 16)
    assert _in_autocast_dtype(u) is u
    ref = model.block_parts(idx)[0]["H"]  # float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _in_autocast_dtype(u).dtype == torch.bfloat16
        logits, _ = model(idx)
        parts = model.block_parts(idx)
    assert all(p["H"].dtype == torch.bfloat16 and p["u"].dtype == torch.float32 for p in parts)
    if mixer in ("ema", "learned_ema"):  # no bf16 gates: H is the float32 one to bf16 accuracy
        torch.testing.assert_close(parts[0]["H"].float(), ref, rtol=2e-2, atol=2e-2)
    logits.float().sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_ffn_impls_give_one_model():
    idx = torch.randint(0, V, (2, 11))
    dense, gather, mask = (small_spen(ffn_impl=impl) for impl in ("dense", "gather", "mask"))
    gather.load_state_dict(dense.state_dict())
    mask.load_state_dict(dense.state_dict())
    outs = []
    for model in (dense, gather, mask):
        logits, _ = model(idx)
        logits.square().mean().backward()
        outs.append((logits, [p.grad for p in model.parameters()]))
    for other in outs[1:]:
        torch.testing.assert_close(other[0], outs[0][0])
        for g, r in zip(other[1], outs[0][1]):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    # a config saved before the field existed loads, with today's behaviour
    old = {k: v for k, v in dataclasses.asdict(dense.config).items() if k != "ffn_impl"}
    assert config_from_dict(SPENConfig, old).ffn_impl == "auto"


def test_generate_streams_from_the_state():
    model = small_spen()
    idx = torch.randint(0, V, (2, 5))
    toks = list(model.generate(idx, 6, temperature=0))
    assert len(toks) == 6 and all(t.shape == (2,) and t.dtype == torch.long for t in toks)
    seq = idx
    for t in toks:  # greedy tokens are the argmax of a full re-read of the sequence
        logits, _ = model(seq)
        assert torch.equal(logits[:, -1].argmax(-1), t)
        seq = torch.cat([seq, t[:, None]], 1)
    g = torch.Generator().manual_seed(3)
    sampled = list(model.generate(idx, 4, temperature=1.0, top_k=5, generator=g))
    assert all(((t >= 0) & (t < V)).all() for t in sampled)
    model.train()
    list(model.generate(idx, 2))
    assert model.training  # generate runs in eval mode and restores the caller's mode


def test_spen_130m_size_and_matched_gpt():
    text = describe("spen-130m")
    assert "spen-130m" in text
    with torch.device("meta"):
        spen = build_model("spen-130m")
        gpt = build_model("gpt-130m")
    n_spen, n_gpt = spen.num_params(), gpt.num_params()
    assert 120e6 <= n_spen <= 140e6
    assert abs(n_gpt - n_spen) / n_spen <= 0.10
    assert spen.config.vocab_size == 50257 and spen.config.d_model == 768 and spen.config.n_layer == 12


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_named_pairs_are_matched(size):
    with torch.device("meta"):
        spen, gpt = build_model(f"spen-{size}"), build_model(f"gpt-{size}")
    assert spen.config.d_model == gpt.config.d_model and spen.config.vocab_size == gpt.config.vocab_size
    assert abs(gpt.num_params() - spen.num_params()) / spen.num_params() <= 0.10


def test_config_overrides_and_names():
    cfg = get_config("spen-tiny", n_layer="2", mixer="learned_ema", alphas="0.5,0.05")
    assert cfg.n_layer == 2 and cfg.mixer == "learned_ema" and cfg.alphas == (0.5, 0.05)
    assert build_model("spen-tiny", n_layer=1, d_model=32, vocab_size=50).num_params() > 0
    assert set(MODEL_CONFIGS) >= {"spen-tiny", "spen-small", "spen-130m", "gpt-tiny", "gpt-small", "gpt-130m"}
    with pytest.raises(ValueError, match="unknown model config 'spen-huge'; choose one of.*'spen-130m'"):
        get_config("spen-huge")
    with pytest.raises(ValueError, match="unknown config field.*n_layers.*valid fields"):
        get_config("spen-tiny", n_layers=3)
    with pytest.raises(ValueError, match="unknown config field 'n_layers'"):
        get_config("spen-tiny", n_layers="3")
    # describe takes overrides as get_config does: text as from a command line, or typed values
    assert " V=7 " in describe("spen-tiny", vocab_size="7") and " L=2 " in describe("spen-tiny", n_layer="2")
    with pytest.raises(ValueError, match="alphas must be a sequence of floats"):
        describe("spen-tiny", alphas=0.5)
    with pytest.raises(ValueError, match=r"SPENConfig.scan_backend: unknown scan backend 'nope'; choose one of \["):
        get_config("spen-tiny", scan_backend="nope")
    with pytest.raises(ValueError, match="SPENConfig.d_model must be a positive integer, got 16.5"):
        SPENConfig(d_model=16.5)


def test_unknown_mixer_and_predictor_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown mixer 'rnn'; choose one of \['attention', 'ema'"):
        SPENConfig(mixer="rnn")
    with pytest.raises(ValueError, match=r"unknown predictor 'mlp'; choose one of \['attention', 'linear'\]"):
        get_config("spen-tiny", predictor="mlp")
    with pytest.raises(ValueError, match="ffn_active"):
        SPENConfig(ffn_active=0.0)
    with pytest.raises(ValueError, match=r"SPENConfig.ffn_impl: unknown FFN impl 'csr'; choose one of \['dense'"):
        get_config("spen-tiny", ffn_impl="csr")


def test_bad_input_fails_clearly():
    model = small_spen()
    with pytest.raises(ValueError, match=r"integer token ids.*torch.float32"):
        model(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, vocab_size=37\)"):
        model(torch.full((1, 3), V, dtype=torch.long))
    with pytest.raises(ValueError, match="list of 2 per-block states"):
        model(torch.zeros(1, 3, dtype=torch.long), state=[None])


def test_the_gradient_of_H_is_one_product_and_no_sum():
    # what the stacked product is for: in the traced forward+backward of x̂, e and c, exactly one op
    # writes an H-sized tensor (B T x S D), the product of the stacked gradients with the stacked
    # weight; unstacked, P and M each wrote one and an add summed them. Sizes chosen so that no
    # weight or other activation has H's number of elements.
    from torch.fx.experimental.proxy_tensor import make_fx

    block = small_spen().blocks[0]
    B, T, S, D = 3, 17, 3, 16

    class Context(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = block

        def forward(self, u, H):
            x_hat, e, c, _ = self.block._predict_and_mix(u, H, None, None)
            return x_hat, c

    ctx = Context()
    names = [n for n, _ in ctx.named_parameters() if ".predictor." in n or ".mix." in n]

    def fwd_bwd(u, H, *weights):
        x_hat, c = torch.func.functional_call(ctx, dict(zip(names, weights)), (u, H))
        return torch.autograd.grad((x_hat.sum() + c.sum(),), [u, H, *weights])

    weights = [dict(ctx.named_parameters())[n].detach().requires_grad_() for n in names]
    u = torch.randn(B, T, D, requires_grad=True)
    H = torch.randn(B, T, S, D, requires_grad=True)
    graph = make_fx(fwd_bwd)(u, H, *weights).graph
    assert all(w.numel() != H.numel() for w in weights)
    writes = [
        str(n.target) for n in graph.nodes
        if n.op == "call_function" and "view" not in str(n.target)
        and isinstance(n.meta.get("val"), torch.Tensor) and n.meta["val"].numel() == H.numel()
    ]
    assert writes == ["aten.mm.default"], writes


def test_rmsnorm_keeps_float64():
    # it computed in float32 whatever the input, so a float64 SPEN was float32-accurate in its norms
    from emaprobe.models.common import RMSNorm

    norm = RMSNorm(7).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 7, dtype=torch.float64)
    expect = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
    torch.testing.assert_close(norm(x), expect, rtol=1e-14, atol=0)
    assert norm(x.float()).dtype == torch.float32
