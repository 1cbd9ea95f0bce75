"""Every result file's run record names the code that produced it."""

from __future__ import annotations

import os

from emaprobe.utils import io


def test_git_sha_marks_a_run_of_uncommitted_code(monkeypatch):
    monkeypatch.delenv("EMAPROBE_GIT_SHA", raising=False)
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


def test_a_command_names_the_code_it_started_with_when_head_moves(monkeypatch, tmp_path):
    from emaprobe.cli import main

    monkeypatch.delenv("EMAPROBE_GIT_SHA", raising=False)
    heads = iter(["aaa111"] + ["bbb222"] * 50)  # HEAD moves (a commit) once the command has started
    monkeypatch.setattr(io, "_git", lambda *args: next(heads) if args[0] == "rev-parse" else "")
    assert main(["run", "probe_map", "--smoke", "--out", str(tmp_path)]) == 0
    assert io.read_json(tmp_path / "map.json")["git_sha"] == "aaa111"
    assert "EMAPROBE_GIT_SHA" not in os.environ  # put back after the command
    assert io.run_record()["git_sha"] == "bbb222"


def test_an_explicit_sha_is_kept_through_the_pin(monkeypatch):
    monkeypatch.setenv("EMAPROBE_GIT_SHA", "given")
    monkeypatch.setattr(io, "_git", lambda *args: "head")
    with io.pinned_git_sha():
        assert io.run_record()["git_sha"] == "given"
    assert os.environ["EMAPROBE_GIT_SHA"] == "given"
