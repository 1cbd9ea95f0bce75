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


def test_run_record_names_the_device_the_run_used_not_the_machines_gpu(monkeypatch):
    """A --device cpu run on a machine with a GPU is a CPU figure: its record must not name the card."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA Test Card")
    assert io.run_record(device="cpu")["device"] == f"cpu ({os.cpu_count()} cores)"
    assert io.run_record(device=torch.device("cpu"))["device"].startswith("cpu (")
    assert io.run_record(device="cuda")["device"] == "NVIDIA Test Card"
    assert io.run_record()["device"] == "NVIDIA Test Card"  # no device given: what "auto" would take
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert io.run_record()["device"].startswith("cpu (")


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
