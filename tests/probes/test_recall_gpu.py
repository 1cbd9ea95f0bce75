"""On a GPU, an MQAR training step must not wait for the host: with a dozen runs sharing one
card, each such wait costs a time slice (``notes/probes.md``). Run with ``pytest -m gpu``."""

import pytest
import torch

from emaprobe.probes.recall import RecallModel, RecallModelConfig, recall_step
from emaprobe.tasks.mqar import MQARConfig

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
