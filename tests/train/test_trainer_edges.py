"""The trainer at its edges: settings changed on resume, NaN weights and validation
losses, run folders without a checkpoint, another corpus on resume, a stale model/ export, a stop
request in the last step, and a GPT prompt longer than its window. Tiny models on random tokens,
a few steps each."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import signal

import pytest
import torch
from torch import nn

import emaprobe.train.lm as lm_module
from emaprobe.cli import main
from emaprobe.models import build_model
from emaprobe.train import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    RUN_NAME,
    LMData,
    TrainConfig,
    TrainingDiverged,
    TrainingInterrupted,
    load_checkpoint,
    train_lm,
)
from emaprobe.train.checkpoint import save_checkpoint
from emaprobe.train.config import OptimConfig
from emaprobe.train.run import MODEL_DIR, export_model, exported_step
from emaprobe.train.schedule import lr_at

pytestmark = pytest.mark.usefixtures("one_torch_thread")
V = 40
CFG = TrainConfig(steps=2, batch_size=2, seq_len=16, log_every=1, eval_every=0, ckpt_every=0, device="cpu",
                  optim=OptimConfig(warmup_steps=1))


def _tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (2_000,), generator=torch.Generator().manual_seed(seed))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("spen-tiny", vocab_size=V, d_model=16, n_layer=1, d_bottleneck=8, d_ff=32, n_head=2)


def _train(out, cfg=CFG, data=None, **kw):
    return train_lm(_model(), data or LMData(train=_tokens(), name="random"), cfg, out, quiet=True, **kw)


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / METRICS_NAME).read_text().splitlines()]


# 1. optimizer settings changed on --resume are used, not only announced


def test_resume_trains_with_changed_betas_eps_and_weight_decay(tmp_path, capsys):
    _train(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    longer = dataclasses.replace(CFG, steps=4)
    _train(tmp_path / "a", longer, resume=True)
    changed = dataclasses.replace(longer, optim=dataclasses.replace(CFG.optim, weight_decay=0.9, beta1=0.0, eps=0.5))
    _train(tmp_path / "b", changed, resume=True)
    assert "optim.weight_decay: checkpoint 0.1, now 0.9" in capsys.readouterr().out
    same, other = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert same[:3] == other[:3] and same[3] != other[3]  # step 4 reads what step 3's new update wrote
    groups = load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)["optimizer"]["param_groups"]
    assert [(g["weight_decay"], tuple(g["betas"]), g["eps"]) for g in groups] == [
        (0.9, (0.0, 0.95), 0.5), (0.0, (0.0, 0.95), 0.5)]  # the no-decay group stays undecayed


# 2. non-finite settings, weights and validation losses


@pytest.mark.parametrize("field, value, message", [
    ("eps", 0.0, "optim.eps must be > 0"),
    ("eps", -1.0, "optim.eps must be > 0"),
    ("eps", math.nan, "optim.eps must be a finite number, got nan"),
    ("lr", math.inf, "optim.lr must be a finite number, got inf"),
    ("weight_decay", math.nan, "optim.weight_decay must be a finite number, got nan"),
    ("grad_clip", math.nan, "optim.grad_clip must be a finite number, got nan"),
    ("grad_clip", math.inf, "optim.grad_clip must be a finite number, got inf"),
])
def test_optim_config_names_a_bad_or_non_finite_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        OptimConfig(**{field: value})


def test_cli_refuses_a_negative_eps_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["lm", "train", "--config", "spen-tiny", "--data", "ptb", "--steps", "2", "--out", str(out),
                 "--set", "train.optim.eps=-1"]) == 2
    assert "optim.eps must be > 0" in capsys.readouterr().err
    assert not out.exists()


class _SpoiledLM(nn.Module):
    """A bigram LM. ``spoil_at``: its forward call that sets an unused parameter (no gradient, so the loss and
    grad norm stay finite) to NaN; ``nan_eval``: NaN logits in eval mode only."""

    def __init__(self, spoil_at: int = 0, nan_eval: bool = False):
        super().__init__()
        self.emb, self.head = nn.Embedding(V, 8), nn.Linear(8, V)
        self.unused = nn.Parameter(torch.zeros(3))
        self.calls, self.spoil_at, self.nan_eval = 0, spoil_at, nan_eval

    def forward(self, idx, state=None):
        self.calls += 1
        if self.calls == self.spoil_at:
            with torch.no_grad():
                self.unused.fill_(math.nan)
        logits = self.head(self.emb(idx))  # (B, T, V)
        return (logits * math.nan if self.nan_eval and not self.training else logits), None


def test_nan_weights_after_a_finite_step_are_not_checkpointed(tmp_path):
    cfg = dataclasses.replace(CFG, steps=6, ckpt_every=2)
    with pytest.raises(TrainingDiverged, match=r"at step 4: the weights are NaN.*kept \(step 2 in"):
        train_lm(_SpoiledLM(spoil_at=3), LMData(train=_tokens()), cfg, tmp_path, quiet=True)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 2
    assert all(math.isfinite(x) for x in _losses(tmp_path))


def test_a_nan_validation_loss_is_divergence(tmp_path):
    cfg = dataclasses.replace(CFG, steps=4, ckpt_every=1, eval_every=2, eval_batches=1)
    data = LMData(train=_tokens(), val=_tokens(1))
    with pytest.raises(TrainingDiverged, match=r"at step 2: validation loss nan.*kept \(step 1 in"):
        train_lm(_SpoiledLM(nan_eval=True), data, cfg, tmp_path, quiet=True)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 1


def test_divergence_before_any_checkpoint_does_not_advise_a_resume(tmp_path):
    cfg = dataclasses.replace(CFG, steps=4, ckpt_every=2, eval_every=1, eval_batches=1)
    with pytest.raises(TrainingDiverged, match=r"\(none was written yet\).*then start again in a new --out"):
        train_lm(_SpoiledLM(nan_eval=True), LMData(train=_tokens(), val=_tokens(1)), cfg, tmp_path, quiet=True)


# 3. a run folder without its checkpoint: a run stopped before its first one starts over under --resume;
# a trained run's model/ is never overwritten


def test_a_run_stopped_before_its_first_checkpoint_starts_over_only_under_resume(tmp_path, capsys):
    _train(tmp_path / "whole")
    _train(tmp_path / "cut")
    (tmp_path / "cut" / CHECKPOINT_NAME).unlink()  # as a run killed before its first checkpoint leaves it
    before = {p.name: p.read_bytes() for p in (tmp_path / "cut").iterdir()}
    with pytest.raises(ValueError, match=rf"holds the files of a run stopped before its first checkpoint "
                                         rf"\({RUN_NAME}, {METRICS_NAME}\); pass --resume to start it over"):
        _train(tmp_path / "cut")
    assert {p.name: p.read_bytes() for p in (tmp_path / "cut").iterdir()} == before
    capsys.readouterr()
    _train(tmp_path / "cut", resume=True)
    assert "the run there stopped before its first checkpoint; starting it over" in capsys.readouterr().err
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "whole")


@pytest.mark.parametrize("resume", [False, True])
def test_a_model_folder_without_its_checkpoint_is_refused_before_reading_data(tmp_path, monkeypatch, resume):
    import emaprobe.train.run as run_module
    from emaprobe.train.run import run_lm_training

    (tmp_path / MODEL_DIR).mkdir()  # what is left of a trained run once its checkpoint was deleted
    (tmp_path / RUN_NAME).write_text("{}")
    monkeypatch.setattr(run_module, "load_lm_data", lambda *a, **k: pytest.fail("the data was read"))
    with pytest.raises(ValueError, match=rf"a trained run's files \(model/, {RUN_NAME}\) but no checkpoint.pt"
                                         r".*choose a new --out, or remove those files"):
        run_lm_training("spen-tiny", "ptb", tmp_path, resume=resume)
    assert (tmp_path / RUN_NAME).read_text() == "{}"


def test_resume_without_any_run_says_it_starts_a_new_one(tmp_path, capsys):
    _train(tmp_path / "typo", resume=True)
    assert capsys.readouterr().err == f"no checkpoint in {tmp_path / 'typo'}; starting a new run\n"
    assert load_checkpoint(tmp_path / "typo" / CHECKPOINT_NAME)["step"] == 2


# 4. --resume on another corpus


def test_resume_on_other_data_is_refused_and_an_old_checkpoint_gets_a_note(tmp_path, capsys):
    _train(tmp_path, data=LMData(train=_tokens(), name="ptb:train (val ptb:valid)"))
    longer = dataclasses.replace(CFG, steps=3)
    with pytest.raises(ValueError, match=r"trained on 'ptb:train \(val ptb:valid\)' but this run reads "
                                         r"'ptb:test \(val ptb:test\)'.*same --data and --val"):
        _train(tmp_path, longer, data=LMData(train=_tokens(), name="ptb:test (val ptb:test)"), resume=True)
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    del ckpt["data"]  # as a checkpoint written before the field was
    save_checkpoint(tmp_path / CHECKPOINT_NAME, ckpt)
    capsys.readouterr()
    _train(tmp_path, longer, data=LMData(train=_tokens(), name="anything"), resume=True)
    assert "does not record its training data (an older checkpoint)" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["data"] == "anything"


# 5. model/ brought up to the checkpoint on resume


def test_resume_re_exports_a_model_folder_behind_the_checkpoint(tmp_path, monkeypatch):
    _train(tmp_path, on_checkpoint=export_model)
    folder = tmp_path / MODEL_DIR
    assert exported_step(folder) == 2
    weights = load_checkpoint(tmp_path / CHECKPOINT_NAME)["model"]
    meta = json.loads((folder / "config.json").read_text())
    del meta["checkpoint_step"]  # as an export from before the field, or one a killed run never finished
    (folder / "config.json").write_text(json.dumps(meta))
    (folder / "model.safetensors").write_bytes(b"stale")
    _train(tmp_path, on_checkpoint=export_model, resume=True)  # nothing to train, but the export catches up
    assert exported_step(folder) == 2
    from emaprobe.models import from_pretrained

    loaded = from_pretrained(folder).state_dict()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    saves = []
    monkeypatch.setattr(type(_model()), "save_pretrained", lambda *a, **k: saves.append(a))
    _train(tmp_path, on_checkpoint=export_model, resume=True)
    assert saves == []  # an export already at the checkpoint's step is left alone


# 6. a stop request during the last step


def test_a_stop_request_in_the_last_step_is_raised_after_the_final_checkpoint(tmp_path, monkeypatch):
    def lr_at_then_int(step, *args):
        if step == CFG.steps - 1:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C during the last step
        return lr_at(step, *args)

    monkeypatch.setattr(lm_module, "lr_at", lr_at_then_int)
    handler, exported = signal.getsignal(signal.SIGINT), []
    with pytest.raises(TrainingInterrupted, match=r"SIGINT during the last step \(2 of 2\): the run finished"):
        _train(tmp_path, on_checkpoint=lambda m, out, step: exported.append(step))
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 2 and exported == [2]


# 7 and 8 (generation) are in tests/models/test_decode.py; the CLI's note on a GPT's dropped prompt:


def test_generate_says_how_many_prompt_tokens_a_gpt_dropped(tmp_path, capsys):
    from emaprobe.data.tokenizers import WordTokenizer

    words = ["<unk>", "<eos>", *(f"w{i}" for i in range(V - 2))]
    WordTokenizer(words).save(tmp_path / "tokenizer")
    torch.manual_seed(0)
    build_model("gpt-tiny", vocab_size=V, block_size=8, d_model=16, n_layer=1, n_head=2,
                d_ff=32).save_pretrained(tmp_path / MODEL_DIR)
    prompt = " ".join(words[2:12])  # 10 tokens; 3 new ones leave room for the last 8 - 2 = 6
    assert main(["lm", "generate", "--ckpt", str(tmp_path), "--prompt", prompt, "--tokens", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(prompt)  # the whole prompt is still printed
    assert captured.err == ("note: the model reads only the last 6 of the prompt's 10 tokens (its first 4 were "
                            "dropped): its context of 8 positions must also hold the 3 new ones\n")
    assert main(["lm", "generate", "--ckpt", str(tmp_path), "--prompt", "w1 w2", "--tokens", "3"]) == 0
    assert capsys.readouterr().err == ""


# 9. the schedule's floor, as OptimConfig's docstring now says


def test_the_cosine_reaches_its_floor_one_step_after_the_last():
    o = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=2)
    assert lr_at(9, 10, o) > 0.1 and lr_at(10, 10, o) == pytest.approx(0.1)
    assert "one step after the last" in OptimConfig.__doc__


def test_a_resume_removes_the_temporary_files_a_killed_write_left(tmp_path, capsys):
    # SIGKILL during atomic_write leaves .checkpoint.pt.XXXXXXXX.tmp, as large as a checkpoint, and nothing removed it
    out = tmp_path / "run"
    _train(out, stop_after=1)
    (out / "model").mkdir(exist_ok=True)
    stale = [out / ".checkpoint.pt.k1l2m3n4.tmp", out / "model" / ".model.safetensors.a_b9c8d7.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    (out / ".notes.tmp").write_text("not ours", encoding="utf-8")  # not atomic_write's name: kept
    capsys.readouterr()
    _train(out, resume=True)
    err = capsys.readouterr().err
    assert not any(p.exists() for p in stale) and (out / ".notes.tmp").exists()
    assert all(f"removed {p}: a checkpoint or export a killed run was writing" in err for p in stale)
