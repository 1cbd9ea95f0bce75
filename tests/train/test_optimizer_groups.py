"""AdamW's weight decay touches matrices, never the mixers' decay logits or gate biases."""

import pytest
import torch

from emaprobe.models import build_model
from emaprobe.train import TrainConfig
from emaprobe.train.lm import decays_weight, make_optimizer

MARKED = {"learned_ema": ("decay_logit",), "selective": ("decay_bias", "gate_bias"), "gla": ("decay_logit", "gate_bias")}


def _groups(model):
    opt = make_optimizer(model, TrainConfig(device="cpu"), torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    return decayed, plain


@pytest.mark.parametrize("mixer", sorted(MARKED))
def test_decay_and_gate_parameters_are_not_weight_decayed(mixer):
    model = build_model("spen-tiny", mixer=mixer, vocab_size=50, d_model=16, n_layer=2, d_bottleneck=8, d_ff=32,
                        n_head=2, mixer_rank=4)
    decayed, plain = _groups(model)
    marked = {n for n in decayed | plain if n.rsplit(".", 1)[-1] in MARKED[mixer]}
    assert len(marked) == 2 * len(MARKED[mixer])  # one per block
    assert marked <= plain
    assert not marked & decayed
    # every other matrix is still decayed, and the groups cover every parameter once
    assert {n for n, p in model.named_parameters() if p.dim() >= 2} - marked == decayed
    assert decayed | plain == {n for n, _ in model.named_parameters()}


def test_the_mark_survives_a_move_and_is_read_per_parameter():
    model = build_model("spen-tiny", mixer="learned_ema", vocab_size=50, d_model=16, n_layer=1, d_bottleneck=8,
                        d_ff=32, n_head=2)
    model = model.to(torch.float64)  # .to() keeps the Parameter objects, so their marks
    logits = [p for n, p in model.named_parameters() if n.endswith("decay_logit")]
    assert logits and all(not decays_weight(p) for p in logits)
    assert decays_weight(torch.nn.Parameter(torch.zeros(3, 3)))
    assert not decays_weight(torch.nn.Parameter(torch.zeros(3)))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("max_norm", [0.5, 1e3, float("inf")])
def test_clip_and_step_is_clip_grad_norm_then_step(fused, max_norm, device):
    # fused AdamW divides by the clip factor inside its step (grad_scale); the others clip first. Both
    # give clip_grad_norm_'s norm, parameters and clipped gradients, over steps whose norms clip or not
    from emaprobe.train.lm import clip_and_step

    torch.manual_seed(0)
    shapes = [(37, 5), (3,), (11, 2, 3)]
    ours = [torch.nn.Parameter(torch.randn(s, device=device)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt, opt_ref = (torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=fused) for ps in (ours, ref))
    for scale in (3.0, 0.01, 3.0):
        grads = [scale * torch.randn(s, device=device) for s in shapes]
        for p, q, g in zip(ours, ref, grads):
            p.grad, q.grad = g.clone(), g.clone()
        norm = clip_and_step(opt, iter(ours), max_norm)
        want = torch.nn.utils.clip_grad_norm_(ref, max_norm)
        opt_ref.step()
        torch.testing.assert_close(norm, want, rtol=0, atol=0)
        for p, q in zip(ours, ref):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)
    assert not hasattr(opt, "grad_scale")
