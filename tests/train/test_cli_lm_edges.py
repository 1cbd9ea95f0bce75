"""``emaprobe lm`` at its edges: bad sampling settings, zero sizes, finished and mismatched resumes."""

from __future__ import annotations

import json
import re

import pytest

from emaprobe.cli import main
from emaprobe.cli.lm import training_summary

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_args(out, *extra, steps="2"):
    return ["lm", "train", "--config", "spen-tiny", "--data", "ptb", "--steps", steps, "--out", str(out), "--quiet",
            "--set", "train.batch_size=2", "--set", "train.seq_len=8", "--set", "train.eval_batches=1", "--set", "train.optim.warmup_steps=1",
            "--set", "model.d_model=16", "--set", "model.n_layer=1", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("lm") / "run"
    assert main(_train_args(run)) == 0
    return run


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--temperature", "nan"], r"--temperature must be a finite number >= 0 \(0 is greedy\), got nan"),
        (["--temperature", "inf"], r"--temperature must be a finite number >= 0"),
        (["--temperature", "-0.5"], r"--temperature must be a finite number >= 0 \(0 is greedy\), got -0.5"),
        (["--tokens", "-3"], r"--tokens must be >= 0, got -3"),
        (["--top-k", "0"], r"--top-k must be >= 1"),
    ],
)
def test_generate_bad_settings_fail_before_the_prompt_is_printed(trained, extra, message, capsys):
    assert main(["lm", "generate", "--ckpt", str(trained), "--prompt", "the company", *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == "", "nothing (not even the prompt) may be printed before the error"
    assert captured.err.startswith("emaprobe lm: error: ") and captured.err.endswith("\n")
    assert re.search(message, captured.err), captured.err


def test_generate_zero_temperature_is_greedy_and_deterministic(trained, capsys):
    outs = []
    for seed in ("0", "1"):
        assert main(["lm", "generate", "--ckpt", str(trained), "--prompt", "the company", "--tokens", "4",
                     "--temperature", "0", "--seed", seed]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith("the company")


def test_generate_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["lm", "generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 50)", "(default: 1.0)", "(default: 0)", "(default: auto)"):
        assert default in text, (default, text)


@pytest.mark.parametrize(
    "flag, value",
    [("--seq-len", "0"), ("--seq-len", "-2"), ("--batch-size", "0"), ("--batch-size", "-2"), ("--max-batches", "-1")],
)
def test_eval_zero_or_negative_sizes_are_errors(trained, flag, value, capsys):
    assert main(["lm", "eval", "--ckpt", str(trained), "--data", "ptb", flag, value, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{flag} must be >=" in err and f"got {value}" in err


def test_resume_already_past_steps_says_so_and_changes_nothing(trained, capsys):
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    assert main(_train_args(trained, "--resume", steps="1")) == 0
    out = capsys.readouterr().out
    assert "already at step 2, at or past steps=1; nothing to train" in out
    assert "raise --steps above 2" in out
    assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before


def test_resume_mismatch_names_the_fields_that_differ(trained, capsys):
    assert main(_train_args(trained, "--resume", "--set", "model.d_model=24", "--set", "model.n_head=2", steps="3")) == 2
    err = capsys.readouterr().err
    assert "different model config" in err
    assert "d_model: checkpoint 16, now 24" in err
    assert main(_train_args(trained, "--resume", "--set", "train.seq_len=4", steps="3")) == 2
    err = capsys.readouterr().err
    assert "seq_len=8" in err and "same batches" in err


def test_warmup_at_or_past_steps_warns(tmp_path):
    with pytest.warns(RuntimeWarning, match=r"warmup_steps=5 >= steps=2"):
        assert main(_train_args(tmp_path / "run", "--set", "train.optim.warmup_steps=5")) == 0


def test_training_summary_labels_validation_and_training_tokens():
    result = {"step": 300, "tokens": 1_228_800,
              "val": {"step": 300, "val_loss": 5.0, "val_ppl": 148.4, "val_bpb": 1.9, "val_tokens": 40_960}}
    line = training_summary(result, "runs/x")
    assert "val loss 5.0000" in line and "over 40,960 validation tokens" in line
    assert "trained 300 steps on 1,228,800 tokens" in line
    assert "(1,228,800 tokens)" not in line
    assert "no validation split" in training_summary({"step": 3, "tokens": 10, "val": {}}, "o")
