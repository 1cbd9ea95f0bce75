"""MQAR training on a GPU. A step must not wait for the host: with a dozen runs sharing one card,
each such wait costs a time slice (``notes/probes.md``). Training through ``torch.compile`` must
give every parameter the eager gradient. Run with ``pytest -m gpu``."""

import pytest
import torch
import torch.nn.functional as F

from emaprobe.probes.recall import RecallModel, RecallModelConfig, recall_step
from emaprobe.tasks.mqar import MQARConfig, mqar_batch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("mixer", ["ema", "learned_ema", "selective", "gla", "attention"])
def test_recall_step_never_synchronizes(mixer):
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = RecallModel(RecallModelConfig(mixer=mixer, d_model=64, vocab=256, seq_len=96, key_dim=16, rank=8)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    task = MQARConfig(256, 96, 16)
    recall_step(model, opt, task, 8, 0, dev)  # the first call compiles kernels and fills caches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [recall_step(model, opt, task, 8, s, dev) for s in (1, 2, 3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(bool(torch.isfinite(v)) for v in losses)


@pytest.mark.parametrize("mixer", ["ema", "learned_ema", "selective", "gla", "attention"])
def test_compiled_model_gives_every_parameter_the_eager_gradient(mixer):
    """``train_recall(compile=True)`` trains through ``torch.compile(model)``: on a GPU, where
    Inductor writes Triton kernels, every parameter must get the gradient eager gives it (float32)."""
    dev = torch.device("cuda")
    task = MQARConfig(256, 96, 16)
    b = mqar_batch(task, 8, seed=0, device=dev)
    grads = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        cfg = RecallModelConfig(mixer=mixer, d_model=64, vocab=256, seq_len=96, key_dim=16, rank=8)
        model = RecallModel(cfg).to(dev)
        run = torch.compile(model) if compile_ else model
        logits, y = run(b.tokens, b.labels, task.n_pairs)
        F.cross_entropy(logits.float(), y).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    eager, compiled = grads
    missing = sorted(n for n, g in compiled.items() if g is None and eager[n] is not None)
    assert not missing, f"no gradient through torch.compile for {missing}"
    for n, g in eager.items():
        if g is not None:
            assert (compiled[n] - g).norm() <= 1e-3 * g.norm() + 1e-6, n
