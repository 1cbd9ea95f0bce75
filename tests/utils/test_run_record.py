"""Every result file's run record names the code that produced it."""

from __future__ import annotations

from emaprobe.utils import io


def test_git_sha_marks_a_run_of_uncommitted_code(monkeypatch):
    answers = {("rev-parse", "HEAD"): "abc123", ("status", "--porcelain", "--untracked-files=no"): " M src/x.py"}
    monkeypatch.setattr(io, "_git", lambda *args: answers[args])
    assert io._git_sha() == "abc123-dirty"
    answers[("status", "--porcelain", "--untracked-files=no")] = ""
    assert io._git_sha() == "abc123"
    answers[("rev-parse", "HEAD")] = None  # not a git checkout (an installed wheel)
    assert io._git_sha() is None


def test_run_record_carries_the_sha_and_extras():
    rec = io.run_record(benchmark="x")
    assert rec["benchmark"] == "x"
    assert rec["git_sha"] is None or rec["git_sha"].split("-")[0].isalnum()
