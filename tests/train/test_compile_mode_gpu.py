"""The trainer's ``compile_mode="reduce-overhead"`` on a GPU: the compiled step is recorded as CUDA graphs
and replayed (none skipped), and trains to the losses of the default mode. Run with ``pytest -m gpu``."""

import json

import numpy as np
import pytest
import torch

from emaprobe.models import build_model, resolve_config
from emaprobe.train import METRICS_NAME, LMData, TrainConfig, train_lm

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("config, overrides", [("spen-tiny", {}), ("spen-tiny", {"mixer": "selective"}),
                                               ("gpt-tiny", {})])
def test_reduce_overhead_replays_cuda_graphs_and_trains_as_the_default_mode(config, overrides, tmp_path):
    from torch._dynamo.utils import counters

    tokens = np.random.default_rng(0).integers(0, 1000, 40_000)
    losses, seen = {}, {}
    for mode in ("default", "reduce-overhead"):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = build_model(resolve_config(config), **overrides)
        cfg = TrainConfig(steps=8, batch_size=4, seq_len=64, log_every=1, eval_every=0, ckpt_every=0,
                          device="cuda", compile=True, compile_mode=mode)
        train_lm(model, LMData(train=tokens, name="random tokens"), cfg, tmp_path / mode, quiet=True)
        lines = [json.loads(line) for line in (tmp_path / mode / METRICS_NAME).read_text().splitlines()]
        losses[mode] = [m["loss"] for m in lines if "loss" in m]
        seen[mode] = dict(counters["inductor"])
    assert len(losses["default"]) == len(losses["reduce-overhead"]) == 8
    assert seen["reduce-overhead"].get("cudagraph_skips", 0) == 0, seen["reduce-overhead"]
    # a recorded graph counts its inputs that change between replays (the batch): none without graphs
    assert seen["reduce-overhead"].get("cudagraph_recorded_non_static_inputs", 0) > 0
    assert seen["default"].get("cudagraph_recorded_non_static_inputs", 0) == 0
    np.testing.assert_allclose(losses["reduce-overhead"], losses["default"], rtol=2e-3)
