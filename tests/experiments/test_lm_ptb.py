"""The PTB content experiment in smoke mode: every variant trains, JSON and report come out."""

from __future__ import annotations

import json

import pytest

from emaprobe.experiments import lm_ptb


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_smoke_run_writes_json_table_and_plot(tmp_path):
    results = lm_ptb.run(tmp_path, lm_ptb.SMOKE, smoke=True, quiet=True)
    assert list(results) == list(lm_ptb.VARIANTS)
    mixers = {}
    for name in lm_ptb.VARIANTS:
        r = json.loads((tmp_path / f"{name}.json").read_text())
        assert {"git_sha", "argv", "torch", "time_utc"} <= set(r), "every result carries its run record"
        assert r["tokens"] == 4 * 4 * 16, "matched tokens"
        assert [m["step"] for m in r["curve"] if "loss" in m] == [1, 2, 3, 4]
        for split in ("valid", "test"):
            assert set(r["final"][split]) == {"loss", "ppl", "bpb", "tokens"}
            assert r["final"][split]["loss"] < 10.0
        mixers[name] = (r["model_config"].get("mixer"), r["model_config"].get("predictor"))
    assert mixers["spen-selective"] == ("selective", "linear")
    assert mixers["spen-ema-attnpred"] == ("ema", "attention")
    assert mixers["gpt"] == (None, None)

    readme = (tmp_path / "README.md").read_text()
    assert sum(line.startswith("| spen-") or line.startswith("| gpt") for line in readme.splitlines()) == 5
    assert (tmp_path / "val_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the report is a pure function of the JSON
    (tmp_path / "README.md").unlink()
    assert lm_ptb.write_report(tmp_path) == readme


def test_unknown_variant_lists_valid_ones(tmp_path):
    cfg = lm_ptb.LMPTBConfig(variants=("spen-lstm",))
    with pytest.raises(ValueError, match=r"unknown variant 'spen-lstm'; choose one of \[.*'spen-ema'"):
        lm_ptb.run(tmp_path, cfg)


def test_demo_content_section_compares_spen_and_gpt(tmp_path, capsys):
    out = lm_ptb.content_section(tmp_path, steps=3)
    assert set(out["models"]) == {"spen-ema", "gpt"}
    assert out["ppl_ratio_spen_over_gpt"] == pytest.approx(
        out["models"]["spen-ema"]["val_ppl"] / out["models"]["gpt"]["val_ppl"]
    )
    assert json.loads((tmp_path / "content.json").read_text())["section"] == "content"
    assert "SPEN-ema / GPT perplexity" in capsys.readouterr().out
