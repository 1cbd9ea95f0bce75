"""The PTB content experiment in smoke mode: every variant trains, JSON and report come out."""

from __future__ import annotations

import dataclasses
import json

import pytest

from emaprobe.experiments import lm_ptb
from emaprobe.experiments.protocol import read_claims


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_smoke_run_writes_json_table_and_plot(tmp_path):
    results = lm_ptb.run(lm_ptb.smoke(), tmp_path, quiet=True)
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

    readme = lm_ptb.report(tmp_path)
    assert (tmp_path / "README.md").read_text() == readme
    assert sum(line.startswith("| spen-") or line.startswith("| gpt") for line in readme.splitlines()) == 5
    assert (tmp_path / "val_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the report is a pure function of the JSON
    (tmp_path / "README.md").unlink()
    assert lm_ptb.report(tmp_path) == readme
    claims = {c.claim: c for c in read_claims(tmp_path)}
    assert set(claims) == {"ppl_ratio_ptb_tiny", "predictor_ablation_delta_loss_ptb"}
    delta = claims["predictor_ablation_delta_loss_ptb"]
    attn, ema = (json.loads((tmp_path / f"{n}.json").read_text())["final"]["test"]["loss"]
                 for n in ("spen-ema-attnpred", "spen-ema"))
    assert delta.ours == pytest.approx(attn - ema, abs=1e-5) and delta.seeds == 1


def test_seed_changes_the_weights_and_batches_and_is_recorded(tmp_path):
    cfg = dataclasses.replace(lm_ptb.smoke(), variants=("spen-ema",))
    a = lm_ptb.run(cfg, tmp_path / "a", quiet=True)["spen-ema"]
    b = lm_ptb.run(dataclasses.replace(cfg, seed=1), tmp_path / "b", quiet=True)["spen-ema"]
    assert a["experiment_config"]["seed"] == 0 and b["experiment_config"]["seed"] == 1
    assert a["train_config"]["seed"] == 0 and b["train_config"]["seed"] == 1
    assert a["final"]["test"]["loss"] != b["final"]["test"]["loss"]


def test_unknown_variant_lists_valid_ones(tmp_path):
    cfg = lm_ptb.Config(variants=("spen-lstm",))
    with pytest.raises(ValueError, match=r"unknown variant 'spen-lstm'; choose one of \[.*'spen-ema'"):
        lm_ptb.run(cfg, tmp_path)


def test_demo_content_section_compares_spen_and_gpt(tmp_path, capsys):
    out = lm_ptb.content_section(tmp_path, steps=3)
    assert set(out["models"]) == {"spen-ema", "gpt"}
    assert out["ppl_ratio_spen_over_gpt"] == pytest.approx(
        out["models"]["spen-ema"]["val_ppl"] / out["models"]["gpt"]["val_ppl"]
    )
    assert json.loads((tmp_path / "content.json").read_text())["section"] == "content"
    assert "SPEN-ema / GPT perplexity" in capsys.readouterr().out
