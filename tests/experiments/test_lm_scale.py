"""lm_scale: the plan of jobs, the fits and verdicts, and the smoke run end to end (CPU, PTB)."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from emaprobe.experiments import lm_scale as L
from emaprobe.experiments.protocol import read_claims, run_experiment


def test_log_spaced_steps_end_at_the_last_step_and_grow_geometrically():
    steps = L.log_spaced_steps(6103, 8)
    assert steps[-1] == 6103 and len(steps) == 8
    ratios = np.diff(np.log(steps))
    assert np.allclose(ratios, math.log(2), atol=0.05)
    assert L.log_spaced_steps(5, 1) == (5,)
    assert L.log_spaced_steps(3, 8) == (1, 2, 3)  # duplicates collapse, never step 0


def test_power_law_fit_recovers_a_known_exponent_and_brackets_the_prediction():
    d = np.geomspace(1e6, 1e8, 7)
    rng = np.random.default_rng(0)
    loss = 20.0 * d ** -0.12 * np.exp(rng.normal(0, 0.003, d.size))
    fit = L.power_law_fit(list(d), list(loss), at=8e9)
    assert fit["exponent"] == pytest.approx(0.12, abs=0.01)
    truth = 20.0 * 8e9 ** -0.12
    assert fit["loss_lo"] < truth < fit["loss_hi"]
    with pytest.raises(ValueError, match="3 or more"):
        L.power_law_fit([1e6, 1e7], [3.0, 2.0], at=1e9)


def test_plan_shares_the_headline_pair_with_the_ladder(tmp_path):
    cfg = L.Config(spen_lr=1e-3, gpt_lr=5e-4)
    head = L.plan(cfg, tmp_path, "headline")
    ladder = L.plan(cfg, tmp_path, "ladder")
    assert {j.name for j in head} <= {j.name for j in ladder}
    assert {j.lr for j in head if j.family == "gpt"} == {5e-4}
    mech = L.plan(cfg, tmp_path, "mechanisms")
    assert len(mech) == cfg.seeds * len(cfg.mechanisms)
    assert len({j.name for j in mech}) == len(mech)


def test_headline_variants_join_the_pair_and_the_ladder_keeps_its_own_budget(tmp_path):
    cfg = L.Config(spen_lr=1e-3, gpt_lr=5e-4, headline_variants=("spen-selective", "gpt"), ladder_tokens=20_000_000)
    head = L.plan(cfg, tmp_path, "headline")
    assert [j.variant for j in head] == ["spen-ema", "gpt", "spen-selective"]  # the pair always, first
    assert {j.size for j in head} == {"130m"} and {j.tokens for j in head} == {cfg.headline_tokens}
    ladder = L.plan(cfg, tmp_path, "ladder")
    assert {j.tokens for j in ladder} == {20_000_000} and {j.variant for j in ladder} == {"spen-ema", "gpt"}
    # the ladder's small pair is the lr stage's seed-0 pair: the same job names, so it is not trained twice
    lr_small = {j.name for j in L.plan(dataclasses.replace(cfg, lrs=(1e-3, 5e-4)), tmp_path, "lr")}
    assert {j.name for j in ladder if j.size == "small"} <= lr_small
    with pytest.raises(ValueError, match="headline_variants: unknown"):
        L.Config(headline_variants=("mamba",))
    with pytest.raises(ValueError, match="ladder_tokens must be >= 0"):
        L.Config(ladder_tokens=-1)


def test_a_gap_that_points_the_wrong_way_is_reported_as_the_reason_not_a_claim():
    s = {"paired": {"spen-ema - gpt": {"mean": -0.3, "lo": -0.4, "hi": -0.2, "seeds": 3, "values": [-0.3] * 3}},
         "selective_gap_note": "no gap at this scale"}
    why = L.unmeasured(s, [])
    assert why["selective_closes_gap"].startswith("no gap at this scale Run spen-selective where the gap is open")
    assert why["ppl_ratio_130m"] == "its runs are not in runs/"
    assert "gpt is still behind spen-ema (-0.300 nats)" in L._behind_note(s)


def _fake(variant, size, tokens, ppl, lr=1e-3, seed=0):
    job = L.Job(variant, size, lr, seed, tokens)
    return job.name, {"job": dataclasses.asdict(job), "num_params": 1, "num_params_non_embedding": 1,
                      "final": {"x.test": {"ppl": ppl}}}


def test_ladder_takes_the_budget_with_the_most_complete_pairs_whatever_the_latest_config():
    cfg = dataclasses.asdict(L.Config())  # ladder_tokens 0: the headline budget, which only 130m has
    runs = dict([_fake("spen-ema", "130m", 10**8, 90.0), _fake("gpt", "130m", 10**8, 70.0)]
                + [_fake(v, size, 2 * 10**7, p) for size in ("tiny", "small", "130m")
                   for v, p in (("spen-ema", 150.0), ("gpt", 200.0))]
                + [_fake("spen-ema", "tiny", 5 * 10**6, 300.0)]  # no gpt partner: not a pair
                + [_fake("gpt", "tiny", 2 * 10**7, 1.0, lr=4e-3)])  # not the best lr: ignored
    tokens, rows = L.ladder_rows(runs, cfg, {"spen": 1e-3, "gpt": 1e-3})
    assert tokens == 2 * 10**7
    assert [r["size"] for r in rows] == ["tiny", "small", "130m"]
    assert rows[0]["ratio"]["x.test"] == pytest.approx(0.75)
    # equal counts: the config's own budget wins
    two = {k: r for k, r in runs.items() if r["job"]["size"] == "130m"}
    assert L.ladder_rows(two, cfg, {"spen": 1e-3, "gpt": 1e-3})[0] == 10**8
    assert L.ladder_rows(two, {**cfg, "ladder_tokens": 2 * 10**7}, {"spen": 1e-3, "gpt": 1e-3})[0] == 2 * 10**7
    assert L.ladder_rows({}, cfg, {"spen": 1e-3, "gpt": 1e-3}) == (None, [])


def _headline_run(cfg, variant, seed, loss, params=1):
    """(name, record) of a headline-scale run whose test loss is ``loss`` and whose curve falls as 1/t."""
    job = L.Job(variant, "130m", 1e-3, seed, cfg.headline_tokens, cfg.curve_points)
    curve = [{"tokens": t, "val_loss": loss + 1 / t} for t in (1e6, 2e6, 4e6, 8e6)]
    final = {s: {"loss": loss, "ppl": math.exp(loss), "bpb": 1.0} for s in ("wikipedia.test", "books.test")}
    return job.name, {"job": dataclasses.asdict(job), "num_params": params, "num_params_non_embedding": params,
                      "tokens": job.tokens, "final": final, "curve": curve, "time_utc": "2026", "name": job.name,
                      "experiment_config": dataclasses.asdict(cfg)}


def test_headline_seeds_plan_whole_seeds_first_and_the_gap_claim_takes_an_interval(tmp_path):
    cfg = L.Config(spen_lr=1e-3, gpt_lr=1e-3, headline_variants=("spen-selective",), headline_seeds=3)
    head = L.plan(cfg, tmp_path, "headline")
    assert [(j.seed, j.variant) for j in head[:3]] == [(0, "spen-ema"), (0, "gpt"), (0, "spen-selective")]
    assert sorted({j.seed for j in head}) == [0, 1, 2] and len(head) == 9
    with pytest.raises(ValueError, match="headline_seeds must be >= 1"):
        L.Config(headline_seeds=0)

    def run(variant, seed, loss):
        return _headline_run(cfg, variant, seed, loss)

    # the gap (ema - gpt) is 0.2 nats on every seed; selective closes 0.8, 0.7, 0.9 of it
    runs = dict(r for k, closed in enumerate((0.8, 0.7, 0.9))
                for r in (run("spen-ema", k, 4.3), run("gpt", k, 4.1), run("spen-selective", k, 4.3 - 0.2 * closed)))
    s = L.summarize(runs)
    assert s["headline"]["ratio_seeds"] == pytest.approx({k: math.exp(0.2) for k in range(3)})
    assert sorted(s["headline"]["curve_ratio_seeds"]) == [1, 2]  # seed 0's is curve_ratio
    assert [c["ratio"] for c in s["headline"]["curve_ratio_seeds"][2]] == pytest.approx([math.exp(0.2)] * 4)
    sel = s["headline"]["others"]["spen-selective"]  # seed 0 closed 0.8: its loss is 0.04 above gpt's throughout
    assert [c["ratio"] for c in sel["curve_ratio"]] == pytest.approx([math.exp(0.04)] * 4)
    # seeds 1 and 2 closed 0.7 and 0.9: their own curves sit 0.06 and 0.02 nats above their gpt's
    assert sorted(sel["curve_ratio_seeds"]) == [1, 2]
    assert [c["ratio"] for c in sel["curve_ratio_seeds"][1]] == pytest.approx([math.exp(0.06)] * 4)
    assert [c["ratio"] for c in sel["curve_ratio_seeds"][2]] == pytest.approx([math.exp(0.02)] * 4)
    assert sel["extrapolated"]["ppl_ratio"] == pytest.approx(math.exp(0.04), rel=1e-3)
    assert sel["extrapolated"]["ppl_ratio_lo"] <= sel["extrapolated"]["ppl_ratio"] <= sel["extrapolated"]["ppl_ratio_hi"]
    claims = {c.claim: c for c in L.claims(s, "cmd")}
    gap = claims["selective_closes_gap"]
    assert gap.seeds == 3 and gap.ours == pytest.approx(0.8) and gap.std == pytest.approx(0.1)
    assert gap.verdict == "confirmed"  # the t-interval [0.55, 1.05] lies above 0.5
    assert "Gap closed by seed: 0 0.800, 1 0.700, 2 0.900; 95% t-interval [0.552, 1.048]" in gap.note
    assert claims["ppl_ratio_130m"].seeds == 3 and claims["ppl_ratio_130m"].std == pytest.approx(0.0, abs=1e-9)
    r = f"{math.exp(0.2):.3f}"
    assert f"paired by seed: {r} (95% t-interval {r}-{r}); by seed 0 {r}, 1 {r}, 2 {r}" in claims["ppl_ratio_130m"].note
    ex = s["headline"]["extrapolated_seeds"]  # every seed's curves are seed 0's: the same fit, the same ratio
    assert sorted(ex) == [1, 2] and ex[2]["ppl_ratio"] == pytest.approx(s["headline"]["extrapolated"]["ppl_ratio"])
    assert f"seed 2 {ex[2]['ppl_ratio']:.2f} ({ex[2]['ppl_ratio_lo']:.2f}-" in claims["ppl_ratio_130m"].note
    # with seed 0 alone the same claim has no interval, so it cannot be confirmed
    one = {k: r for k, r in runs.items() if r["job"]["seed"] == 0}
    gap1 = {c.claim: c for c in L.claims(L.summarize(one), "cmd")}["selective_closes_gap"]
    assert gap1.seeds == 1 and gap1.verdict == "inconclusive" and gap1.std is None
    assert "by seed" not in {c.claim: c for c in L.claims(L.summarize(one), "cmd")}["ppl_ratio_130m"].note


def test_the_predictor_ablation_at_the_headline_scale_is_paired_by_seed_and_names_its_extra_parameters():
    cfg = L.Config(headline_variants=("spen-ema-attnpred",), headline_seeds=3)
    ema, gpt = 4.30, 4.10

    def runs_with(attn_losses):
        return dict(r for k, a in enumerate(attn_losses)
                    for r in (_headline_run(cfg, "spen-ema", k, ema, params=130e6), _headline_run(cfg, "gpt", k, gpt),
                              _headline_run(cfg, "spen-ema-attnpred", k, a, params=180e6)))

    def claim(runs):
        s = L.summarize(runs)
        rows = {c.claim: c for c in L.claims(s, "cmd")}
        return s, rows["predictor_ablation_130m"], L.unmeasured(s, list(rows.values()))

    # attention over the traces closes half the gap on every seed: a clear difference, so "identical loss" fails
    s, c, why = claim(runs_with((4.20, 4.19, 4.21)))
    assert c.seeds == 3 and c.ours == pytest.approx(-0.10) and c.std == pytest.approx(0.01)
    assert c.verdict == "refuted" and c.paper == 0.0 and "predictor_ablation_130m" not in why
    assert "180.0M parameters against 130.0M" in c.note and "0 0.500, 1 0.550, 2 0.450" in c.note
    assert c.scale == (f"180M vs 130M params, 1e+08 tokens each, {cfg.train}, {cfg.tokenizer} tokens, T={cfg.seq_len}, "
                       "seeds [0, 1, 2], paired")
    assert s["headline"]["others"]["spen-ema-attnpred"]["minus_ema"]["values"] == pytest.approx([-0.10, -0.11, -0.09])
    # the same loss within the tolerance on every seed: the paper's claim holds at this scale
    assert claim(runs_with((4.301, 4.299, 4.300)))[1].verdict == "confirmed"
    # one seed gives no interval, so no verdict either way
    one = claim(runs_with((4.20,)))[1]
    assert one.seeds == 1 and one.std is None and one.verdict == "inconclusive" and "one seed" in one.note
    # without the variant's runs the claim is listed as unmeasured, with the command that makes them
    pair = {k: r for k, r in runs_with((4.20,)).items() if r["job"]["variant"] != "spen-ema-attnpred"}
    s = L.summarize(pair)
    assert L.unmeasured(s, L.claims(s, "cmd"))["predictor_ablation_130m"].endswith(
        "--set headline_variants=spen-ema,gpt,spen-ema-attnpred)")


def test_best_lr_needs_the_lr_stage_or_an_explicit_value(tmp_path):
    cfg = L.Config(lrs=(1e-3, 2e-3))
    with pytest.raises(ValueError, match="run the 'lr' stage first, or set spen_lr"):
        L.best_lr(cfg, tmp_path, "spen")
    (tmp_path / "runs").mkdir()
    for lr, loss in ((1e-3, 4.2), (2e-3, 4.1)):
        job = L.Job("spen-ema", cfg.small_size, lr, 0, cfg.lr_tokens)
        (tmp_path / "runs" / f"{job.name}.json").write_text(json.dumps({"final_val_loss": loss}))
    assert L.best_lr(cfg, tmp_path, "spen") == 2e-3
    assert L.best_lr(dataclasses.replace(cfg, spen_lr=7e-4), tmp_path, "spen") == 7e-4


def test_bad_configs_are_named_errors(monkeypatch):
    with pytest.raises(ValueError, match="stages: unknown"):
        L.Config(stages=("lr", "warmup"))
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        L.Config(ladder=("tiny", "huge"))
    with pytest.raises(ValueError, match="mechanisms: unknown"):
        L.Config(mechanisms=("spen-ema", "mamba"))
    with pytest.raises(ValueError, match="NAME=SPEC"):
        L.Config(evals=("wikipedia.test",))
    monkeypatch.delenv("EMAPROBE_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="EMAPROBE_DATA is not set"):
        L.resolve_spec("text/no-such-*.jsonl.xz")


def test_smoke_run_writes_runs_report_and_claims(tmp_path, capsys):
    out = tmp_path / "lm_scale"
    overrides = {"work_dir": str(tmp_path / "work")}
    run_experiment("lm_scale", budget="smoke", overrides=overrides, out=out)
    assert f"checkpoints and token caches to {tmp_path / 'work'}/" in capsys.readouterr().out, \
        "the run says where its large files go, which is not --out"
    runs = sorted((out / "runs").glob("*.json"))
    cfg = L.smoke()
    n_jobs = 2 * len(cfg.lrs) + cfg.seeds * len(cfg.mechanisms) - 2 + 2  # lr seed-0 runs are reused
    assert len(runs) == n_jobs
    rec = json.loads(runs[0].read_text())
    for key in ("git_sha", "device", "torch", "num_params", "curve", "final", "tokens_per_s"):
        assert key in rec
    assert set(rec["final"]) == {"ptb.valid", "ptb.test"}
    head = json.loads((out / "runs" / f"{L.Job('spen-ema', 'tiny', 3e-3, 0, 256).name}.json").read_text())
    assert len(head["curve"]) == len(L.log_spaced_steps(256 // 32, cfg.curve_points))
    claims = {c.claim: c for c in read_claims(out)}
    # selective_closes_gap needs GPT behind fixed EMA on every seed, which a smoke run may not give
    assert {"ppl_ratio_130m", "predictor_ablation_delta_loss", "selection_beats_fixed_decay"} <= set(claims) <= set(L.CLAIMS)
    assert claims["ppl_ratio_130m"].paper == 8.0 and claims["ppl_ratio_130m"].ours > 0
    # each claim names the data it ran on, from the run's config: PTB here, never the GPU runs' corpus
    for c in claims.values():
        assert f"{cfg.train}, {cfg.tokenizer} tokens, T={cfg.seq_len}" in c.scale, (c.claim, c.scale)
    assert claims["predictor_ablation_delta_loss"].seeds == cfg.seeds
    for name in ("README.md", "summary.json", "token_curve.png", "mechanisms.png", "paired.png"):
        assert (out / name).is_file(), name
    assert "![paired.png](paired.png)" in (out / "README.md").read_text()
    # a second run finds every job done and only redraws the report
    before = {p: p.stat().st_mtime_ns for p in runs}
    run_experiment("lm_scale", budget="smoke", overrides=overrides, out=out)
    assert {p: p.stat().st_mtime_ns for p in runs} == before


def test_a_jobs_checkpoint_folder_is_keyed_by_every_setting_its_numbers_depend_on():
    cfg, job = L.smoke(), L.Job("gpt", "tiny", 1e-3, 0, 64)
    folder = L.job_folder(job, cfg)
    assert folder.parent == L.work_dir(cfg) / "jobs" and folder.name.startswith(job.name + "-")
    # how and where jobs run, and which others run, leave it where an interrupted run finds it again
    for how in (dict(parallel=3), dict(workers=4), dict(stages=("lr",)), dict(only="gpt-*"), dict(seeds=5),
                dict(ckpt_every=7), dict(headline_variants=("spen-selective",))):
        assert L.job_folder(dataclasses.replace(job, ckpt_every=7), dataclasses.replace(cfg, **how)) == folder, how
    for what in (dict(weight_decay=0.0), dict(warmup_frac=0.5), dict(min_lr_ratio=0.9), dict(seq_len=8),
                 dict(batch_size=3), dict(eval_batches=1), dict(compile=True), dict(train="ptb:valid")):
        assert L.job_folder(job, dataclasses.replace(cfg, **what)) != folder, what
    assert L.job_folder(dataclasses.replace(job, seed=1), cfg) != folder


def test_other_settings_never_resume_a_checkpoint_nor_pass_for_done(tmp_path, capsys):
    # the same work_dir, other settings: every job must train, not read the first run's checkpoint
    work = {"work_dir": str(tmp_path / "work"), "stages": "lr", "lrs": "0.001"}  # two jobs: spen-ema and gpt
    run_experiment("lm_scale", budget="smoke", overrides=work, out=tmp_path / "a")
    other = {**work, "weight_decay": "0.0", "warmup_frac": "0.5", "min_lr_ratio": "0.9"}
    run_experiment("lm_scale", budget="smoke", overrides=other, out=tmp_path / "b")
    assert "nothing to train" not in capsys.readouterr().out
    a, b = ({p.name: json.loads(p.read_text()) for p in (tmp_path / d / "runs").glob("*.json")} for d in "ab")
    assert set(a) == set(b) and len(a) == 2
    for name in a:
        assert b[name]["experiment_config"]["weight_decay"] == 0.0
        assert b[name]["train_curve"] != a[name]["train_curve"], name
    # the same --out with other settings: its finished jobs are another config's, so the run is refused
    before = {p: p.read_bytes() for p in (tmp_path / "a" / "runs").glob("*.json")}
    with pytest.raises(ValueError, match=r"runs/.*\.json holds lm_scale results made with other settings \("
                                         r"min_lr_ratio: 0.1 there, 0.9 now; warmup_frac: 0.02 there, 0.5 now; "
                                         r"weight_decay: 0.1 there, 0.0 now\) \(and 1 more .*--overwrite"):
        run_experiment("lm_scale", budget="smoke", overrides=other, out=tmp_path / "a")
    with pytest.raises(ValueError, match="made with other settings"):  # the module itself, called directly
        L.run(_smoke_with(other), tmp_path / "a")
    assert {p: p.read_bytes() for p in before} == before
    run_experiment("lm_scale", budget="smoke", overrides=other, out=tmp_path / "a", overwrite=True)
    assert {n: json.loads((tmp_path / "a" / "runs" / n).read_text())["train_curve"] for n in a} == \
        {n: r["train_curve"] for n, r in b.items()}, "replaced: the same settings give the same numbers"


def _smoke_with(overrides: dict) -> L.Config:
    from emaprobe.experiments.protocol import config_for, get_experiment

    return config_for(get_experiment("lm_scale"), "smoke", overrides)


def test_the_claims_command_carries_the_settings_every_run_shares():
    cfg = dataclasses.asdict(dataclasses.replace(L.smoke(), weight_decay=0.0, work_dir="w", stages=("lr",), parallel=2))
    runs = {"a": {"experiment_config": cfg}, "b": {"experiment_config": {**cfg, "seeds": 3}}}
    # seeds differ between the runs (a folder filled stage by stage): no one command set them, so none is named
    assert L.rerun_command(runs, Path("out")) == "emaprobe run lm_scale --smoke --set weight_decay=0.0 --out out"
    gpu = dataclasses.asdict(L.gpu())
    assert L.rerun_command({"a": {"experiment_config": gpu}}, "results/lm_scale") == (
        "EMAPROBE_DATA=... emaprobe run lm_scale --budget gpu --out results/lm_scale")


def test_the_claims_command_covers_every_stage_of_a_folder_filled_stage_by_stage():
    """Seeds, headline seeds and variants, and the ladder's tokens, read from the runs of their own stage: the
    command names the most seeds and every variant any run had, so it makes every run of the folder again."""
    gpu = L.gpu()

    def run(stage, **fields):
        return {"experiment_config": dataclasses.asdict(dataclasses.replace(gpu, stages=(stage,), **fields))}

    runs = {"lr": run("lr"), "m0": run("mechanisms"), "m3": run("mechanisms", seeds=6),
            "h0": run("headline", headline_seeds=3),
            "h1": run("headline", headline_seeds=3, headline_variants=("spen-ema", "gpt", "spen-selective")),
            "h2": run("headline", headline_seeds=2, headline_variants=("spen-ema", "gpt", "spen-ema-attnpred")),
            "ladder": run("ladder", ladder_tokens=20_000_000)}
    assert L.rerun_command(runs, "r") == (
        "EMAPROBE_DATA=... emaprobe run lm_scale --budget gpu --set seeds=6 --set headline_seeds=3 "
        "--set headline_variants='[\"spen-ema\", \"gpt\", \"spen-selective\", \"spen-ema-attnpred\"]' "
        "--set ladder_tokens=20000000 --out r")
    runs["ladder2"] = run("ladder", ladder_tokens=0)  # ladders of two budgets: no one value covers both
    assert "ladder_tokens" not in L.rerun_command(runs, "r")


COMMITTED = Path(__file__).resolve().parents[2] / "results" / "lm_scale"


@pytest.mark.skipif(not (COMMITTED / "claims.json").is_file(), reason="needs the committed results/")
def test_the_committed_folder_keeps_its_command_and_resumes_under_its_budget():
    committed = {c["command"] for c in json.loads((COMMITTED / "claims.json").read_text())}
    assert committed == {L.rerun_command(L.load_runs(COMMITTED), Path("results/lm_scale"))}
    assert L.conflicts(L.gpu(), COMMITTED) == [], "a staged folder: plan fields differ between its runs, not settings"


def test_the_gap_claim_reads_the_mean_of_the_test_splits_and_names_each_split_alone():
    # the claim's share is of the mean test loss (splits weighted alike); beside the Wikipedia perplexity ratio it
    # read as Wikipedia's, so the note gives each split's own share too
    cfg = L.Config(spen_lr=1e-3, gpt_lr=1e-3, headline_variants=("spen-selective",), headline_seeds=3)

    def split_losses(r, wiki, books):
        r["final"]["wikipedia.test"]["loss"], r["final"]["books.test"]["loss"] = wiki, books
        return r

    runs = {}
    for k in range(3):  # ema - gpt: 0.2 nats on both splits; selective closes 0.6 on wikipedia, 1.0 on books
        for variant, wiki, books in (("spen-ema", 4.3, 4.0), ("gpt", 4.1, 3.8), ("spen-selective", 4.18, 3.8)):
            name, r = _headline_run(cfg, variant, k, wiki)
            runs[name] = split_losses(r, wiki, books)
    s = L.summarize(runs)
    gap = {c.claim: c for c in L.claims(s, "cmd")}["selective_closes_gap"]
    assert gap.ours == pytest.approx(0.8) and "mean test loss" in gap.metric
    assert "On each test split alone: wikipedia.test 0.600 (by seed 0 0.600, 1 0.600, 2 0.600); books.test 1.000" in gap.note
