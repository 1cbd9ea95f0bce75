"""``emaprobe bench scan`` on CPU: bad input is refused by its flag, and the help is its own."""

from __future__ import annotations

import pytest

from emaprobe.cli import main


@pytest.mark.parametrize("repeats", ["0", "-1"])
def test_bench_scan_refuses_repeats_below_one(repeats, tmp_path, capsys):
    assert main(["bench", "scan", "--shape", "2x70x8", "--repeats", repeats, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"emaprobe bench: error: --repeats must be >= 1, got {repeats}\n"
    assert not any(tmp_path.iterdir())


def test_bench_scan_repeats_are_refused_on_cuda_where_they_would_do_nothing(tmp_path, capsys):
    assert main(["bench", "scan", "--device", "cuda", "--repeats", "3", "--out", str(tmp_path)]) == 2
    assert "--repeats is for the CPU benchmark" in capsys.readouterr().err


def test_bench_scan_help_shows_its_defaults_and_only_its_own_examples(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "scan", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal's width
    assert "the median is reported (default: 7)" in out
    assert "emaprobe bench scan --shape 8x8192x256" in out and "bench ffn" not in out
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "emaprobe bench scan --shape" in out and "emaprobe bench ffn --device cuda" in out  # the overview has both
