"""The LM trainer on real PTB text: learning, exact resume, divergence, evaluation."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from torch import nn

from emaprobe.train import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    RUN_NAME,
    BatchSampler,
    LMData,
    TrainConfig,
    TrainingDiverged,
    TrainingInterrupted,
    evaluate_lm,
    load_checkpoint,
    train_lm,
)
from emaprobe.train.corpus import load_lm_data
from emaprobe.train.run import run_lm_training

FAST = {"batch_size": "8", "seq_len": "32", "log_every": "1", "eval_batches": "2", "optim.warmup_steps": "5"}


@pytest.fixture(scope="module")
def ptb():
    return load_lm_data("ptb")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _metrics(path):
    return [json.loads(line) for line in (path / METRICS_NAME).read_text().splitlines()]


def _curve(metrics):
    """Everything logged except wall-clock throughput."""
    return [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in metrics]


@pytest.mark.parametrize("config", ["spen-tiny", "gpt-tiny"])
def test_tiny_model_loss_falls_on_ptb(config, ptb, tmp_path):
    over = {**FAST, "steps": "40", "eval_every": "0", "optim.lr": "3e-3"}
    result = run_lm_training(config, "ptb", tmp_path, train_overrides=over, lm_data=ptb, quiet=True)
    losses = [m["loss"] for m in _metrics(tmp_path) if "loss" in m]
    assert len(losses) == 40
    assert losses[0] > math.log(10_000) - 0.3  # starts near uniform over the 10k words
    assert sum(losses[-5:]) / 5 < losses[0] - 1.5, losses
    val = result["val"]
    assert val["val_loss"] < math.log(10_000) - 1.0
    assert val["val_ppl"] == pytest.approx(math.exp(val["val_loss"]))
    assert 0 < val["val_bpb"] < val["val_loss"] / math.log(2)  # PTB words are several bytes long
    assert (tmp_path / "model" / "config.json").is_file() and (tmp_path / "tokenizer").is_dir()
    record = json.loads((tmp_path / RUN_NAME).read_text())
    assert record["train"]["steps"] == 40 and record["seed"] == 0 and "git_sha" in record and "argv" in record
    assert record["model"]["vocab_size"] == 10_000


def test_killed_and_resumed_run_equals_unbroken_bit_for_bit(ptb, tmp_path, capsys):
    over = {**FAST, "steps": "20", "ckpt_every": "10", "eval_every": "10"}
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    run_lm_training("spen-tiny", "ptb", unbroken, train_overrides=over, lm_data=ptb, quiet=True)
    # killed at step 13: three steps logged after the step-10 checkpoint are lost work
    run_lm_training("spen-tiny", "ptb", broken, train_overrides=over, lm_data=ptb, quiet=True, stop_after=13)
    assert load_checkpoint(broken / CHECKPOINT_NAME)["step"] == 10
    assert max(m["step"] for m in _metrics(broken)) == 13
    capsys.readouterr()
    resumed = run_lm_training("spen-tiny", "ptb", broken, train_overrides=over, lm_data=ptb, quiet=True, resume=True)
    assert capsys.readouterr().out == f"resuming {broken} from step 10 of 20\n"  # one plain line, no warning
    assert resumed["resumed_from"] == 10

    a, b = _curve(_metrics(unbroken)), _curve(_metrics(broken))
    assert [m["step"] for m in a if "loss" in m] == list(range(1, 21))
    assert a == b  # every loss, lr, grad norm and validation number, exactly
    wa = load_checkpoint(unbroken / CHECKPOINT_NAME)["model"]
    wb = load_checkpoint(broken / CHECKPOINT_NAME)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((broken / RUN_NAME).read_text())["resumed_from_step"] == 10
    assert not list(broken.glob(".*.tmp")), "a temporary checkpoint file was left behind"

    with pytest.raises(ValueError, match="--resume"):
        run_lm_training("spen-tiny", "ptb", broken, train_overrides=over, lm_data=ptb, quiet=True)
    with pytest.raises(ValueError, match=r"different \['batch_size'\] \(batch_size=8\)"):
        run_lm_training("spen-tiny", "ptb", broken, train_overrides={**over, "batch_size": "4"}, lm_data=ptb,
                        quiet=True, resume=True)
    with pytest.raises(ValueError, match="different model config \\(mixer: checkpoint 'ema', now 'selective'\\)"):
        run_lm_training("spen-tiny", "ptb", broken, train_overrides=over, model_overrides={"mixer": "selective"},
                        lm_data=ptb, quiet=True, resume=True)
    # a lower learning rate after a divergence is allowed, and the resume line says so (steps 21-22 run with it)
    capsys.readouterr()
    run_lm_training("spen-tiny", "ptb", broken, train_overrides={**over, "steps": "22", "optim.lr": "1e-4"},
                    lm_data=ptb, quiet=True, resume=True)
    changed = "changed train settings: optim.lr: checkpoint 0.001, now 0.0001; steps: checkpoint 20, now 22"
    assert f"resuming {broken} from step 20 of 22; {changed}" in capsys.readouterr().out
    assert [m["step"] for m in _metrics(broken) if "loss" in m][-2:] == [21, 22]


def test_sigterm_checkpoints_the_step_reached_and_resume_equals_unbroken(ptb, tmp_path, monkeypatch):
    import signal

    import emaprobe.train.lm as lm_module

    over = {**FAST, "steps": "12", "ckpt_every": "100", "eval_every": "6"}
    unbroken, cut = tmp_path / "unbroken", tmp_path / "cut"
    run_lm_training("spen-tiny", "ptb", unbroken, train_overrides=over, lm_data=ptb, quiet=True)
    real_lr_at = lm_module.lr_at

    def lr_at_then_term(step, *args):
        if step == 7:  # SIGTERM arrives during step 8: that step finishes, is checkpointed, and the run stops
            signal.raise_signal(signal.SIGTERM)
        return real_lr_at(step, *args)

    monkeypatch.setattr(lm_module, "lr_at", lr_at_then_term)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 8 of 12: checkpoint written to"):
        run_lm_training("spen-tiny", "ptb", cut, train_overrides=over, lm_data=ptb, quiet=True)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again
    first = load_checkpoint(cut / CHECKPOINT_NAME)
    assert first["step"] == 8  # no checkpoint was due; the signal wrote one
    monkeypatch.setattr(lm_module, "lr_at", real_lr_at)
    result = run_lm_training("spen-tiny", "ptb", cut, train_overrides=over, lm_data=ptb, quiet=True, resume=True)
    assert _curve(_metrics(cut)) == _curve(_metrics(unbroken))
    # training time adds up over the two processes, and a finished run reports it again
    final = load_checkpoint(cut / CHECKPOINT_NAME)["train_s"]
    assert 0 < first["train_s"] < final <= result["train_s"]
    again = run_lm_training("spen-tiny", "ptb", cut, train_overrides=over, lm_data=ptb, quiet=True, resume=True)
    assert again["already_done"] and again["train_s"] == final


class _PoisonedLM(nn.Module):
    """A bigram LM whose logits turn NaN after ``after`` forward calls."""

    def __init__(self, vocab: int, after: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, vocab)
        self.calls, self.after = 0, after

    def forward(self, idx, state=None):
        self.calls += 1
        logits = self.head(self.emb(idx))  # (B, T, V)
        return (logits * float("nan") if self.calls > self.after else logits), None


@pytest.mark.parametrize("log_every, logged_steps", [
    (1, list(range(1, 8))),
    # losses are read back at log lines, evaluations and checkpoints, not at every step: step 8's NaN
    # (log every 5, checkpoints every 3) is found at step 9, before its checkpoint, and named as step 8
    (5, [5]),
])
def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(tmp_path, log_every, logged_steps):
    tokens = torch.randint(0, 32, (2_000,), generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=20, batch_size=4, seq_len=16, log_every=log_every, ckpt_every=3, eval_every=0)
    with pytest.raises(TrainingDiverged, match=r"at step 8: loss nan.*step 6"):
        train_lm(_PoisonedLM(32, after=7), LMData(train=tokens), cfg, tmp_path, quiet=True)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 6
    logged = _metrics(tmp_path)
    assert [m["step"] for m in logged] == logged_steps
    assert all(math.isfinite(m["loss"]) for m in logged)


def test_losses_are_read_back_once_per_log_line_not_per_step(tmp_path, monkeypatch):
    # a read-back waits for every queued kernel (on a GPU the host then cannot run ahead of it): the loop
    # makes one per log line, for all the steps since the last, and one item() per checkpoint, whether the
    # weights are finite (CPU AdamW's own item() on its step counts, which the fused CUDA AdamW does not
    # make, is not the loop's)
    reads, items = [], []
    tolist, item = torch.Tensor.tolist, torch.Tensor.item

    def ours() -> bool:
        return "emaprobe" in sys._getframe(2).f_code.co_filename

    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: (ours() and reads.append(tuple(t.shape))) or tolist(t))
    monkeypatch.setattr(torch.Tensor, "item", lambda t: (ours() and items.append(tuple(t.shape))) or item(t))
    tokens = torch.randint(0, 32, (2_000,), generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=12, batch_size=4, seq_len=16, log_every=4, ckpt_every=0, eval_every=0)
    train_lm(_PoisonedLM(32, after=10**9), LMData(train=tokens), cfg, tmp_path, quiet=True)
    assert reads == [(4, 2)] * 3 and items == [()], items  # ckpt_every=0: the one checkpoint is the last step
    assert [m["step"] for m in _metrics(tmp_path)] == [4, 8, 12]


class _UniformLM(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx, state=None):
        return torch.zeros(*idx.shape, self.vocab) + self.dummy, None


def test_evaluate_uniform_model_gives_log_vocab_and_bits_per_byte():
    tokens = torch.randint(0, 50, (1_001,), generator=torch.Generator().manual_seed(1))
    out = evaluate_lm(_UniformLM(50), tokens, batch_size=3, seq_len=7, bytes_per_token=2.5)
    assert out["tokens"] == 1_000  # every target once, the ragged tail included
    assert out["loss"] == pytest.approx(math.log(50))
    assert out["ppl"] == pytest.approx(50.0)
    assert out["bpb"] == pytest.approx(math.log(50) * 1_000 / (2.5 * 1_000 * math.log(2)))
    assert set(out) == {"loss", "ppl", "bpb", "tokens"}


def test_sampler_streams_are_deterministic_per_rank_and_resumable():
    tokens = torch.arange(10_000)
    r0, r0_again, r1 = (BatchSampler(tokens, 4, 8, seed=3, rank=r) for r in (0, 0, 1))
    x0, _ = r0.next()
    assert torch.equal(x0, r0_again.next()[0])
    assert not torch.equal(x0, r1.next()[0])
    state = r0.state_dict()
    after = r0.next()
    r1.load_state_dict(state)
    assert torch.equal(after[0], r1.next()[0])
    x, y = after
    assert x.shape == (4, 8) and torch.equal(y[:, :-1], x[:, 1:])


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_loss_module_gives_the_eager_loss_and_gradients(mode):
    """wrap_model(compile=True): the model and its loss as one graph through Inductor (CPU here), with the
    eager module's loss and gradients; both are ``model.loss``, the cross-entropy of ``model(x)``'s logits.
    "reduce-overhead" compiles the same graph (its CUDA graphs are for CUDA: tests/train/test_compile_mode_gpu.py)."""
    from emaprobe.models import build_model, resolve_config
    from emaprobe.ops import cross_entropy
    from emaprobe.train import DistInfo, NextTokenLoss, accumulate_gradients, wrap_model

    torch.manual_seed(0)
    model = build_model(resolve_config("spen-tiny"))
    gen = torch.Generator().manual_seed(3)
    batches = [tuple(torch.randint(0, 300, (2, 2, 9), generator=gen).unbind(0)) for _ in range(2)]
    eager = wrap_model(model, DistInfo(), torch.device("cpu"))
    assert isinstance(eager, NextTokenLoss) and eager.model is model
    x, y = batches[0]
    torch.testing.assert_close(eager(x, y), cross_entropy(model(x)[0], y), rtol=1e-6, atol=1e-6)
    grads, losses = [], []
    for run in (eager, wrap_model(model, DistInfo(), torch.device("cpu"), compile=True, mode=mode)):
        model.zero_grad(set_to_none=True)
        losses.append(accumulate_gradients(run, batches))
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    assert len(grads[0]) == len(grads[1]) == len(list(model.parameters()))
    for g, r in zip(grads[1], grads[0]):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kw, match", [
    ({"compile_mode": "fast"}, "train.compile_mode must be one of"),
    ({"compile": True, "compile_mode": "reduce-overhead", "grad_accum": 2}, "needs train.grad_accum=1, got 2"),
    ({"compile_mode": "reduce-overhead"}, "set train.compile=true too"),
])
def test_train_config_refuses_a_compile_mode_it_cannot_run(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_wrap_model_refuses_cuda_graphs_under_ddp_and_unknown_modes():
    from emaprobe.models import build_model, resolve_config
    from emaprobe.train import DistInfo, wrap_model

    model = build_model(resolve_config("spen-tiny"))
    with pytest.raises(ValueError, match="does not run under DDP"):
        wrap_model(model, DistInfo(rank=0, world_size=2), torch.device("cpu"), compile=True, mode="reduce-overhead")
    with pytest.raises(ValueError, match="compile mode must be one of"):
        wrap_model(model, DistInfo(), torch.device("cpu"), compile=True, mode="max-speed")
