"""``emaprobe lm``: clear errors for bad input; train -> eval -> generate on PTB through the CLI."""

from __future__ import annotations

import json
import re

import pytest
import torch

from emaprobe.cli import main


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_args(out, *extra):
    return ["lm", "train", "--config", "spen-tiny", "--data", "ptb", "--steps", "3", "--out", str(out), "--quiet",
            "--set", "train.batch_size=4", "--set", "train.seq_len=16", "--set", "train.eval_batches=1", *extra]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "model.n_layers=3"], r"unknown config field 'model.n_layers'; valid fields: \[.*'n_layer'"),
        (["--set", "train.optim.lrate=1"], r"unknown config field 'train.optim.lrate'; valid fields: \[.*'lr'"),
        (["--set", "train.grad_accum=many"], r"train.grad_accum: expected int, got 'many'"),
        (["--set", "train.steps=5"], r"--steps 3 and --set train.steps=5 disagree"),
        (["--set", "train.seq_len=512", "--config", "gpt-tiny"], r"seq_len=512 is longer than gpt-tiny's block_size=256"),
        (["--set", "model.mixer=lstm"], r"unknown mixer 'lstm'; choose one of \['attention', 'ema', 'gla', 'learned_ema', 'sel"),
        (["--set", "model.predictor=mlp"], r"unknown predictor 'mlp'"),
        (["--set", "mixer=lstm"], r"--set mixer=lstm: name model.FIELD or train.FIELD"),
        (["--set", "model.mixer"], r"--set takes FIELD=VALUE"),
    ],
)
def test_bad_overrides_fail_with_clear_errors(extra, message, tmp_path, capsys):
    assert main(_train_args(tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("emaprobe lm train: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists(), "a failed start must not leave a run folder"


def test_unknown_config_name_lists_valid_ones(tmp_path, capsys):
    args = _train_args(tmp_path / "run")
    args[args.index("spen-tiny")] = "spen-huge"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unknown model config 'spen-huge'" in err and "'spen-tiny'" in err and "'gpt-tiny'" in err


def test_the_old_dotted_flags_are_gone(tmp_path, capsys):
    """One override dialect: ``--set model.FIELD=VALUE``; ``--model.FIELD=VALUE`` is not an option."""
    with pytest.raises(SystemExit) as exc:
        main(_train_args(tmp_path / "run", "--model.mixer=selective"))
    assert exc.value.code == 2
    assert "unrecognized arguments: --model.mixer=selective" in capsys.readouterr().err


def test_train_eval_generate_configs_round_trip(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(run, "--set", "model.mixer=selective")) == 0
    assert json.loads((run / "run.json").read_text())["model"]["mixer"] == "selective"
    capsys.readouterr()

    out_json = tmp_path / "eval.json"
    assert main(["lm", "eval", "--ckpt", str(run), "--data", "ptb", "--max-batches", "2", "--json", str(out_json),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    assert {"loss", "ppl", "bpb", "tokens", "run"} <= set(result)
    assert result["data"] == "ptb:valid" and result["tokens"] == 2 * 4 * 16
    assert result["ppl"] == pytest.approx(torch.tensor(result["loss"]).exp().item(), rel=1e-6)
    assert f"ppl {result['ppl']:.2f}" in printed and "bpb" in printed

    assert main(["lm", "generate", "--ckpt", str(run), "--prompt", "the company said", "--tokens", "5"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("the company said") and len(text.split()) >= 3 + 5 - 1  # <eos> prints as a newline

    assert main(["lm", "eval", "--ckpt", str(tmp_path / "nowhere"), "--data", "ptb"]) == 2
    assert "does not exist" in capsys.readouterr().err

    assert main(["lm", "configs"]) == 0
    table = capsys.readouterr().out
    assert "spen-tiny" in table and "gpt-tiny" in table and "spen-130m" in table
