"""``emaprobe bench loss``: it checks each form against the torch form, times it and records it (no timing
is asserted), for the loss alone and with the head before it; on CUDA the fused form and the compiled one
run beside it, each against its floor."""

from __future__ import annotations

import json

import pytest
import torch

from emaprobe.cli import main


def test_bench_loss_on_cpu_times_the_torch_form(tmp_path, capsys):
    assert main(["bench", "loss", "--device", "cpu", "--tokens", "33", "--vocab", "1001", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "loss_cpu.json").read_text())
    assert rec["benchmark"] == "loss-cpu" and rec["torch"] and "git_sha" in rec
    loss, head = rec["rows"]
    assert (loss["part"], loss["N"], loss["V"]) == ("loss", 33, 1001)
    assert (head["part"], head["N"], head["V"], head["D"]) == ("head", 33, 1001, 768)
    for row in (loss, head):
        assert row["torch_fwd_ms"] > 0 and row["torch_fwd_bwd_ms"] > 0 and row["torch_loss_err"] == 0
        assert "fused_fwd_ms" not in row and "floor_fwd_ms" not in row
    out = capsys.readouterr().out
    assert "token cross-entropy, 33 x 1001 logits, float32, cpu" in out
    assert "the head and the loss, h 33 x 768 and W 1001 x 768, float32, cpu" in out
    assert "over the floor" not in out  # no floor on CPU: the table does not promise one


@pytest.mark.parametrize("flag, value", [("--tokens", "0"), ("--vocab", "-3"), ("--width", "0"), ("--repeats", "0")])
def test_bench_loss_refuses_a_count_below_one_naming_its_flag(flag, value, tmp_path, capsys):
    given = {"--tokens": "8", "--vocab": "11", "--width": "4", "--repeats": "1", flag: value}
    argv = ["bench", "loss", "--device", "cpu", *(v for kv in given.items() for v in kv), "--out", str(tmp_path)]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"emaprobe bench: error: {flag} must be >= 1, got {value}\n"
    assert not any(tmp_path.iterdir())


def test_bench_loss_help_names_every_form_and_its_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "loss", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(f"impl='{impl}'" in out for impl in ("fused", "torch")) and "torch.compile" in out
    assert "(default: 16384)" in out and "(default: 50257, GPT-2's)" in out and "(default: 768, the 130m models')" in out
    assert "emaprobe.ops.linear_cross_entropy" in out
    assert "emaprobe bench loss --device cuda" in out and "bench scan" not in out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_loss_on_cuda_runs_every_form_against_its_floor(tmp_path):
    assert main(["bench", "loss", "--tokens", "257", "--vocab", "50257", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("loss_*.json")
    loss, head = json.loads(path.read_text())["rows"]
    assert head["floor_fwd_bwd_ms"] > loss["floor_fwd_bwd_ms"] > 0  # the head adds its products and bytes
    for row, tol in ((loss, 1e-4), (head, 1e-2)):  # the head's logits are bf16 products: rounded once more
        for form in ("fused", "compiled", "torch"):
            assert row[f"{form}_fwd_bwd_x_floor"] == pytest.approx(row[f"{form}_fwd_bwd_ms"] / row["floor_fwd_bwd_ms"])
            assert row[f"{form}_loss_err"] < tol and row[f"{form}_grad_err"] < 10 * tol
