"""``emaprobe bench ffn``: it runs both FFN forms and records them (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

from emaprobe.cli import main
from emaprobe.experiments.bench_ffn import run


def test_bench_ffn_writes_every_form(tmp_path, capsys):
    assert main(["bench", "ffn", "--width", "tiny", "--tokens", "32", "--repeats", "1", "--threads", "1",
                 "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "ffn_cpu.json").read_text())
    assert rec["benchmark"] == "ffn-cpu" and rec["torch"] and "git_sha" in rec
    (row,) = rec["rows"]
    assert (row["d_in"], row["d_ff"], row["d_out"], row["k"], row["N"]) == (128, 512, 128, 31, 32)
    for impl in ("dense", "gather", "mask"):
        assert row[f"{impl}_fwd_s"] > 0 and row[f"{impl}_fwd_bwd_s"] > 0
    for impl in ("gather", "mask"):
        assert row[f"{impl}_fwd_speedup"] == pytest.approx(row["dense_fwd_s"] / row[f"{impl}_fwd_s"])
    assert "speed-up" in capsys.readouterr().out


def test_bench_ffn_unknown_width_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown width\(s\) \['huge'\]; choose from \['130m', 'small', 'tiny'\]"):
        run(widths=("huge",), out_dir=None)


@pytest.mark.parametrize("flag, value", [("--tokens", "-8"), ("--tokens", "0"), ("--repeats", "0"), ("--repeats", "-1")])
def test_bench_ffn_refuses_a_count_below_one_naming_its_flag(flag, value, tmp_path, capsys):
    given = {"--tokens": "32", "--repeats": "1", flag: value}
    argv = ["bench", "ffn", "--width", "tiny", *(v for kv in given.items() for v in kv), "--out", str(tmp_path)]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"emaprobe bench: error: {flag} must be >= 1, got {value}\n"
    assert not any(tmp_path.iterdir())  # refused before anything is timed or written


def test_bench_ffn_help_names_every_form_its_defaults_and_only_its_own_examples(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "ffn", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal's width
    assert all(f"impl='{impl}'" in out for impl in ("dense", "gather", "mask"))
    assert "the median is reported (default: 7)" in out
    assert "emaprobe bench ffn --device cuda" in out and "bench scan" not in out
