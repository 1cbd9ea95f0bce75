"""Progress bars: on a terminal a bar, in a log file plain lines, and the switches that hide both."""

from __future__ import annotations

import io
import re

import pytest
import torch

from emaprobe.train import LMData, OptimConfig, TrainConfig, train_lm
from emaprobe.utils import progress_disabled, progress_lines


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("env, tty, bar, lines", [
    (None, True, True, False),   # a terminal: the bar
    (None, False, False, True),  # redirected: no bar's redraws in the file, plain lines instead
    ("0", False, True, False),   # TQDM_DISABLE=0 asks for bars anywhere
    ("1", True, False, False),   # TQDM_DISABLE=1 hides everything
    ("yes", False, False, False),
])
def test_bar_on_a_terminal_lines_in_a_log(monkeypatch, env, tty, bar, lines):
    if env is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", env)
    monkeypatch.setattr("sys.stderr", _Stream(tty))
    assert progress_disabled() is (not bar)
    assert progress_lines() is lines
    # quiet and the ranks other than 0 show neither, wherever they write
    assert progress_disabled(quiet=True) and not progress_lines(quiet=True)
    assert progress_disabled(is_main=False) and not progress_lines(is_main=False)


class _Bigram(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.table = torch.nn.Embedding(vocab, vocab)

    def forward(self, idx, state=None):
        return self.table(idx), None


def test_trainer_prints_a_line_per_log_step_into_a_log(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr("sys.stderr", _Stream(False))
    tokens = torch.randint(0, 32, (2_000,), generator=torch.Generator().manual_seed(0))
    data = LMData(train=tokens, val=tokens[:500])
    cfg = TrainConfig(steps=6, batch_size=4, seq_len=16, log_every=2, eval_every=3, eval_batches=2, ckpt_every=0,
                      optim=OptimConfig(warmup_steps=2))
    train_lm(_Bigram(32), data, cfg, tmp_path / "a")
    out = capsys.readouterr().out
    assert re.findall(r"^train step (\d+)/6  loss \d+\.\d{3}  lr \S+  [\d,]+ tok/s$", out, re.M) == ["2", "4", "6"]
    assert re.findall(r"^eval step (\d+)/6  val loss \d+\.\d{3}  ppl \d+\.\d{2}$", out, re.M) == ["3", "6"]
    # quiet stays silent
    train_lm(_Bigram(32), data, cfg, tmp_path / "b", quiet=True)
    assert "step" not in capsys.readouterr().out
