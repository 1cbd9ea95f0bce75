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
