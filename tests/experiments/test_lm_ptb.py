"""The PTB content experiment in smoke mode: every variant trains, JSON and report come out."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from emaprobe.experiments import lm_ptb
from emaprobe.experiments.protocol import read_claims


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_smoke_run_writes_json_table_and_plot(tmp_path):
    results = lm_ptb.run(lm_ptb.smoke(), tmp_path, quiet=True)
    assert list(results) == list(lm_ptb.VARIANTS) and all(list(by_seed) == [0] for by_seed in results.values())
    mixers = {}
    for name in lm_ptb.VARIANTS:
        r = json.loads((tmp_path / f"{name}-s0.json").read_text())
        assert r == results[name][0]
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
    assert set(claims) == {"ppl_ratio_ptb_tiny", "predictor_ablation_delta_loss_ptb", "selection_beats_fixed_decay_ptb"}
    delta = claims["predictor_ablation_delta_loss_ptb"]
    attn, ema = (json.loads((tmp_path / f"{n}-s0.json").read_text())["final"]["test"]["loss"]
                 for n in ("spen-ema-attnpred", "spen-ema"))
    assert delta.ours == pytest.approx(attn - ema, abs=1e-5) and delta.seeds == 1 and delta.std is None
    assert {c.verdict for c in claims.values()} == {"inconclusive"}, "one seed gives no interval, so no verdict"


def _two_seeds(tmp_path):
    cfg = dataclasses.replace(lm_ptb.smoke(), variants=("spen-ema", "spen-selective"), seeds=(0, 1))
    return cfg, lm_ptb.run(cfg, tmp_path, quiet=True)


def test_seeds_pair_the_variants_and_the_claims_carry_mean_std_and_interval(tmp_path):
    cfg, res = _two_seeds(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "spen-ema-s0.json", "spen-ema-s1.json", "spen-selective-s0.json", "spen-selective-s1.json"]
    lm_ptb.report(tmp_path)
    (claim,) = read_claims(tmp_path)
    assert claim.claim == "selection_beats_fixed_decay_ptb" and claim.seeds == 2
    d = [res["spen-selective"][k]["final"]["test"]["loss"] - res["spen-ema"][k]["final"]["test"]["loss"] for k in (0, 1)]
    assert claim.ours == pytest.approx(sum(d) / 2, abs=1e-5)
    assert claim.std == pytest.approx(abs(d[0] - d[1]) / 2 ** 0.5, abs=1e-5)
    assert "seeds [0, 1]; 95% t-interval" in claim.note and "seeds [0, 1]" in claim.scale
    # the seeds and variants found, where the budget has others
    assert claim.command == ("emaprobe run lm_ptb --smoke --set seeds=0,1 --set variants='[\"spen-ema\", "
                             f"\"spen-selective\"]' --out {tmp_path}")
    readme = (tmp_path / "README.md").read_text()
    assert "seeds 0, 1" in readme and "±" in readme
    assert "(2 seeds); selective against fixed EMA" in readme
    assert (tmp_path / "paired.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "(paired.png)" in readme
    alone = tmp_path / "alone"  # one variant: no pair to draw, and no stale plot left behind
    alone.mkdir()
    (alone / "paired.png").write_bytes(b"stale")
    for k in (0, 1):
        (alone / f"spen-ema-s{k}.json").write_text((tmp_path / f"spen-ema-s{k}.json").read_text())
    assert "paired.png" not in lm_ptb.write_report(alone) and not (alone / "paired.png").exists()


def test_a_rerun_keeps_finished_runs_and_adds_new_seeds(tmp_path, monkeypatch):
    cfg, first = _two_seeds(tmp_path)
    trained = []
    real = lm_ptb.run_variant
    monkeypatch.setattr(lm_ptb, "run_variant", lambda v, c, seed, *a, **k: trained.append((v.name, seed))
                        or real(v, c, seed, *a, **k))
    again = lm_ptb.run(cfg, tmp_path, quiet=True)
    assert trained == [] and again == first, "finished runs are read back, not retrained"
    more = lm_ptb.run(dataclasses.replace(cfg, seeds=(1, 2)), tmp_path, quiet=True)
    assert trained == [("spen-ema", 2), ("spen-selective", 2)]
    assert list(more["spen-ema"]) == [1, 2] and more["spen-ema"][1] == first["spen-ema"][1]
    assert list(lm_ptb.load_results(tmp_path)["spen-selective"]) == [0, 1, 2]


def test_a_run_with_other_settings_is_refused_and_nothing_is_overwritten(tmp_path):
    cfg, _ = _two_seeds(tmp_path)
    before = (tmp_path / "spen-ema-s0.json").read_bytes()
    with pytest.raises(ValueError, match=r"spen-ema-s0.json was made with other settings \(lr=0.003; this run has "
                                         r"lr=0.001\): choose another --out"):
        lm_ptb.run(dataclasses.replace(cfg, lr=1e-3), tmp_path, quiet=True)
    assert (tmp_path / "spen-ema-s0.json").read_bytes() == before


def test_a_rerun_keeps_runs_recorded_before_seeds_and_settings_existed(tmp_path, monkeypatch):
    # results/lm_ptb_h200's JSON predates ``seeds`` and ``threads``: a rerun with more seeds keeps its seed 0
    cfg, _ = _two_seeds(tmp_path)
    for path in tmp_path.glob("*-s0.json"):
        r = json.loads(path.read_text())
        ec = r["experiment_config"]
        del ec["seeds"], ec["variants"], ec["threads"]
        ec["seed"] = 0
        path.write_text(json.dumps(r))
    monkeypatch.setattr(lm_ptb, "run_variant", lambda *a, **k: pytest.fail("nothing is left to train"))
    res = lm_ptb.run(cfg, tmp_path, quiet=True)
    assert list(res["spen-ema"]) == [0, 1] and res["spen-ema"][0]["experiment_config"]["seed"] == 0


def test_a_result_named_without_its_seed_is_reported_with_the_fix(tmp_path):
    _two_seeds(tmp_path)
    (tmp_path / "spen-ema-s0.json").rename(tmp_path / "spen-ema.json")
    with pytest.raises(ValueError, match=r"spen-ema.json: a result without a seed in its name .* rename it to "
                                         r"spen-ema-s<seed>.json"):
        lm_ptb.load_results(tmp_path)


@pytest.mark.parametrize("seeds", [(), (0, 0), (-1,)])
def test_seeds_must_be_distinct_and_not_negative(seeds):
    with pytest.raises(ValueError, match="Config.seeds must be distinct integers >= 0"):
        lm_ptb.Config(seeds=seeds)


def test_seed_changes_the_weights_and_batches_and_is_recorded(tmp_path):
    cfg = dataclasses.replace(lm_ptb.smoke(), variants=("spen-ema",))
    a = lm_ptb.run(cfg, tmp_path / "a", quiet=True)["spen-ema"][0]
    b = lm_ptb.run(dataclasses.replace(cfg, seeds=(1,)), tmp_path / "b", quiet=True)["spen-ema"][1]
    assert a["experiment_config"]["seeds"] == [0] and b["experiment_config"]["seeds"] == [1]
    assert a["train_config"]["seed"] == 0 and b["train_config"]["seed"] == 1
    assert a["final"]["test"]["loss"] != b["final"]["test"]["loss"]


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown variant 'spen-lstm'; choose one of \[.*'spen-ema'"):
        lm_ptb.Config(variants=("spen-lstm",))


def test_demo_content_section_compares_spen_and_gpt(tmp_path, capsys):
    out = lm_ptb.content_section(tmp_path, steps=3)
    assert set(out["models"]) == {"spen-ema", "gpt"}
    assert out["ppl_ratio_spen_over_gpt"] == pytest.approx(
        out["models"]["spen-ema"]["val_ppl"] / out["models"]["gpt"]["val_ppl"]
    )
    assert json.loads((tmp_path / "content.json").read_text())["section"] == "content"
    assert "SPEN-ema / GPT perplexity" in capsys.readouterr().out


def test_the_claims_command_carries_every_setting_that_differs_from_its_budget():
    cfg = dataclasses.replace(lm_ptb.smoke(), lr=1e-3, steps=6)
    res = {"spen-ema": {0: {"experiment_config": dataclasses.asdict(cfg)}},
           "gpt": {0: {"experiment_config": dataclasses.asdict(cfg)}}}
    assert lm_ptb.rerun_command(res) == ("emaprobe run lm_ptb --smoke --set steps=6 --set lr=0.001 "
                                         "--set variants='[\"spen-ema\", \"gpt\"]'")
    assert lm_ptb.rerun_command(res, "runs/x").endswith(" --out runs/x")


COMMITTED = Path(__file__).resolve().parents[2] / "results"


@pytest.mark.parametrize("folder", ["lm_ptb", "lm_ptb_h200"])
def test_the_committed_claims_keep_their_command(folder):
    if not (COMMITTED / folder / "claims.json").is_file():
        pytest.skip("needs the committed results/ (an installed package has none)")
    committed = {c["command"] for c in json.loads((COMMITTED / folder / "claims.json").read_text())}
    assert committed == {lm_ptb.rerun_command(lm_ptb.load_results(COMMITTED / folder), f"results/{folder}")}


def test_a_run_of_other_settings_is_refused_whatever_seeds_and_variants_it_asks_for(tmp_path, monkeypatch):
    # the report reads every run in the folder, so a run of other settings at a new seed would mix in
    cfg = dataclasses.replace(lm_ptb.smoke(), variants=("spen-ema",))
    (tmp_path / "gpt-s4.json").write_text(json.dumps({"experiment_config": dataclasses.asdict(cfg)}))
    monkeypatch.setattr(lm_ptb, "run_variant", lambda *a, **k: pytest.fail("a refused run must not train"))
    with pytest.raises(ValueError, match=r"gpt-s4.json was made with other settings \(steps=4; this run has steps=5\)"):
        lm_ptb.run(dataclasses.replace(cfg, steps=5, seeds=(3,)), tmp_path, quiet=True)
    assert [p for p, _ in lm_ptb.conflicts(dataclasses.replace(cfg, steps=5), tmp_path)] == [tmp_path / "gpt-s4.json"]
    assert lm_ptb.conflicts(dataclasses.replace(cfg, seeds=(7,), variants=("gpt",)), tmp_path) == []


def test_a_corrupt_result_json_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "spen-ema-s0.json").write_text('{"broken')
    for call in (lambda: lm_ptb.run(lm_ptb.smoke(), tmp_path, quiet=True), lambda: lm_ptb.load_results(tmp_path)):
        with pytest.raises(ValueError, match=r"spen-ema-s0.json: malformed JSON at line 1"):
            call()


def test_a_seq_len_past_a_variants_context_is_refused_before_any_training():
    with pytest.raises(ValueError, match=r"seq_len=512 is longer than the context of variant\(s\) gpt \(gpt-tiny, "
                                         r"block_size=256\); lower --set seq_len to 256 or less, or leave them out "
                                         r"with --set variants=spen-ema,"):
        lm_ptb.Config(seq_len=512)
    assert lm_ptb.Config(seq_len=512, variants=("spen-ema",)).seq_len == 512  # SPEN has no block size


def test_a_stop_mid_run_says_the_run_starts_again_and_where_the_finished_ones_are(tmp_path, monkeypatch):
    from emaprobe.train import TrainingInterrupted

    cfg = dataclasses.replace(lm_ptb.smoke(), variants=("spen-ema", "gpt"))
    monkeypatch.setattr(lm_ptb, "ptb_data", lambda: None)

    def run_variant(v, c, seed, data, run_dir, **kw):
        if v.name == "gpt":  # the trainer's own message names a checkpoint in run_dir, a temporary folder
            raise TrainingInterrupted(f"SIGINT at step 2 of 4: checkpoint written to {run_dir / 'checkpoint.pt'}")
        return {"experiment_config": dataclasses.asdict(c), "train_config": {"seed": seed}}

    monkeypatch.setattr(lm_ptb, "run_variant", run_variant)
    with pytest.raises(KeyboardInterrupt) as err:
        lm_ptb.run(cfg, tmp_path, quiet=True)
    text = str(err.value)
    assert "checkpoint written" not in text and text.startswith("SIGINT: gpt seed 0 stopped part way and starts again")
    assert f"the 1 of 2 runs finished are kept in {tmp_path}/" in text and (tmp_path / "spen-ema-s0.json").is_file()


def test_a_finished_runs_folder_goes_at_once(tmp_path, monkeypatch):
    # every run's checkpoint stayed in the temporary folder until the last: a SIGKILL left them all in /tmp
    cfg = dataclasses.replace(lm_ptb.smoke(), variants=("spen-ema", "gpt"), seeds=(0, 1))
    monkeypatch.setattr(lm_ptb, "ptb_data", lambda: None)
    folders = []

    def run_variant(v, c, seed, data, run_dir, **kw):
        assert not any(f.exists() for f in folders), "the runs before this one were removed"
        run_dir.mkdir(parents=True)
        (run_dir / "checkpoint.pt").write_bytes(b"weights")
        folders.append(run_dir)
        return {"experiment_config": dataclasses.asdict(c), "train_config": {"seed": seed}}

    monkeypatch.setattr(lm_ptb, "run_variant", run_variant)
    lm_ptb.run(cfg, tmp_path / "out", quiet=True)
    assert len(folders) == 4 and not any(f.exists() for f in folders)
