"""An interrupted command says how to continue, in the words of that command."""

from __future__ import annotations

import emaprobe.cli.lm as cli_lm
from emaprobe.cli import main
from emaprobe.train import TrainingInterrupted


def test_an_interrupted_lm_train_exits_130_and_names_resume(monkeypatch, capsys):
    def cut(args):
        raise TrainingInterrupted("SIGTERM at step 3 of 9: checkpoint written to runs/x/checkpoint.pt")

    monkeypatch.setattr(cli_lm, "_train", cut)
    assert main(["lm", "train", "--config", "spen-tiny", "--data", "ptb", "--out", "runs/x"]) == 130
    err = capsys.readouterr().err
    assert "emaprobe lm train: interrupted: SIGTERM at step 3 of 9" in err
    assert err.rstrip().endswith("; rerun with --resume to continue")


def test_a_plain_ctrl_c_gets_no_resume_hint_where_the_command_has_none(monkeypatch, capsys):
    import emaprobe.cli.run as cli_run

    def stop(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_run, "_run", stop)
    assert main(["run", "roles", "--smoke"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "resume" not in err
