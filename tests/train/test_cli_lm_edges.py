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
    assert captured.err.startswith("emaprobe lm generate: error: ") and captured.err.endswith("\n")
    assert re.search(message, captured.err), captured.err


def test_generate_zero_temperature_is_greedy_and_deterministic(trained, capsys):
    outs = []
    for seed in ("0", "1"):
        assert main(["lm", "generate", "--ckpt", str(trained), "--prompt", "the company", "--tokens", "4",
                     "--temperature", "0", "--seed", seed]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith("the company")


def test_generate_warns_once_about_prompt_words_outside_the_vocabulary(trained, capsys):
    assert main(["lm", "generate", "--ckpt", str(trained), "--prompt", "The Company said", "--tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("<unk> <unk> said")
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: 2 prompt word(s)"), captured.err
    assert "became <unk>: 'The', 'Company'" in lines[0] and "lower case" in lines[0]
    assert main(["lm", "generate", "--ckpt", str(trained), "--prompt", "the company said", "--tokens", "2"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "argv, default",
    [(["lm", "train"], "(default: 1000;"), (["lm", "eval"], "auto, cpu or cuda (default: auto)")],
)
def test_train_and_eval_help_show_defaults(argv, default, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    assert default in " ".join(capsys.readouterr().out.split())


def test_configs_name_the_alias(capsys):
    assert main(["lm", "configs"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["gpt-130m"].endswith("alias of gpt-124m") and "alias" not in lines["gpt-124m"]
    assert main(["lm", "configs", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["gpt-130m"]["alias_of"] == "gpt-124m" and rows["spen-130m"]["alias_of"] is None


def test_train_reports_a_missing_data_path_before_the_gpt2_ranks(tmp_path, missing_data_then_no_ranks):
    missing, err = missing_data_then_no_ranks(["lm", "train", "--config", "spen-tiny", "--out", str(tmp_path / "run"),
                                               "--quiet"])
    assert missing.startswith(f"emaprobe lm train: error: --data: data spec '{tmp_path / 'missing.txt'}': no such file")
    assert "ranks" not in missing
    # lm train has no --ranks flag, and no Python parameter is a way to give the file here
    assert "GPT-2 ranks file not found: give --tokenizer a saved gpt2 tokenizer folder" in err
    assert "ranks_path" not in err and "--ranks" not in err and err.count("EMAPROBE_DATA") == 2


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


def test_resume_says_so_in_plain_lines(tmp_path, capsys, recwarn):
    run = tmp_path / "run"
    assert main(_train_args(run)) == 0
    capsys.readouterr()
    assert main(_train_args(run, "--resume", steps="3")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"resuming {run} from step 2 of 3; changed train settings: steps: checkpoint 2, now 3")
    assert "resumed from step 2, now 3 steps on" in lines[-1]
    assert not [w for w in recwarn if "resum" in str(w.message)], "a resume is not a warning"


def test_resume_with_another_kind_of_model_says_which_kinds(trained, capsys):
    assert main(_train_args(trained, "--resume", "--config", "gpt-tiny", steps="3")) == 2
    err = capsys.readouterr().err
    assert err.startswith("emaprobe lm train: error: ")
    assert "the checkpoint holds a SPEN model but this run's config is a GPT model" in err
    assert "<absent>" not in err
