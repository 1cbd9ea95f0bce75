"""The demo is honest: its scan timing says how noisy it is and where the real figure lives; it names its pictures."""

from __future__ import annotations

import json

import pytest

from emaprobe.experiments import demo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_scan_section_times_interleaved_and_prints_the_caveat(tmp_path, capsys):
    result = demo.scan_section(tmp_path, repeats=3)
    out = capsys.readouterr().out
    assert "best of 3, interleaved" in out
    assert "timings on a shared machine are noisy" in out and "the benchmark figure is" in out
    saved = json.loads((tmp_path / "scan.json").read_text())
    assert len(saved["ours_times_s"]) == len(saved["lfilter_times_s"]) == 3
    assert saved["ours_s"] == min(saved["ours_times_s"]) and saved["lfilter_s"] == min(saved["lfilter_times_s"])
    assert result["err_naive"] < 1e-12 and result["noisy"] == (saved["spread"] > demo.NOISY_SPREAD)


def test_interleaved_min_times_alternates_the_functions():
    calls = []
    times = demo.interleaved_min_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # one warm-up each, then strictly alternating
    assert [len(v) for v in times.values()] == [3, 3]


def test_run_prints_the_path_of_every_picture(tmp_path, monkeypatch, capsys):
    def drawing(out_dir):
        out_dir.mkdir(parents=True)
        (out_dir / "roles.png").write_bytes(b"\x89PNG")
        return {}

    monkeypatch.setattr(demo, "sections", lambda: {"roles": ("a section that draws", drawing)})
    demo.run(tmp_path)
    assert f"picture: {tmp_path / 'roles' / 'roles.png'}" in capsys.readouterr().out


@pytest.mark.parametrize("only", ["", " , "])
def test_an_empty_only_is_an_error_not_the_whole_demo(tmp_path, capsys, only):
    from emaprobe.cli import main

    assert main(["demo", "--only", only, "--out", str(tmp_path / "d")]) == 2
    assert "names no section; give some of scan,roles,content" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
