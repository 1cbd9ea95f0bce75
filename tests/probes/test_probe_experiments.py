"""Each probe experiment's smoke run through the protocol, and the pieces they are built from."""

import dataclasses
import json

import pytest
import torch

from emaprobe.experiments.protocol import EXPERIMENTS, get_experiment, read_claims, run_experiment
from emaprobe.probes.depth import DepthStack, train_gates
from emaprobe.probes.recall import RecallBlock, RecallModel, RecallModelConfig, train_recall
from emaprobe.probes.states import block_states, build_probe_mixer, mixer_states, residual_states
from emaprobe.tasks.mqar import IGNORE, MQARConfig, mqar_batch

PROBES = ("probe_lag", "probe_mqar", "probe_depth")


@pytest.mark.parametrize("name", PROBES)
def test_probe_smoke_writes_report_and_claims(name, tmp_path):
    assert name in EXPERIMENTS
    out = run_experiment(name, budget="smoke", out=tmp_path / name)
    files = {p.name for p in out.iterdir()}
    assert {"README.md", "claims.json"} <= files
    assert any(f.endswith(".png") for f in files)
    claims = read_claims(out)
    expected = {"probe_lag": "dilution_over_time", "probe_mqar": "selection_fixes_recall",
                "probe_depth": "dilution_over_depth"}[name]
    assert [c.claim for c in claims] == [expected]
    assert claims[0].seeds >= 2


@pytest.mark.parametrize("name", ["probe_lag", "probe_depth"])
def test_a_missing_checkpoint_fails_before_any_probe_runs(name, tmp_path, monkeypatch):
    """The checkpoints are looked at first: at --budget cpu the seeds' probes take minutes, all lost before."""
    exp = get_experiment(name)
    monkeypatch.setattr(exp, "run_seed", lambda *a, **k: pytest.fail("a seed ran before the checkpoints were checked"))
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        run_experiment(name, budget="smoke", overrides={"ckpts": f'["{tmp_path / "nope"}"]'}, out=tmp_path / "out")


def test_probe_map_reads_what_exists(tmp_path):
    lag = run_experiment("probe_lag", budget="smoke", out=tmp_path / "lag")
    out = run_experiment("probe_map", budget="smoke", overrides={
        "roles": str(tmp_path / "absent.json"), "lag": str(lag / "lag.json"), "mqar": f'["{tmp_path / "nope.json"}"]'},
        out=tmp_path / "map")
    res = json.loads((out / "map.json").read_text())
    assert not res["sources"]["roles"]["found"] and "not found" in res["sources"]["roles"]["missing"]
    assert res["sources"]["lag"]["found"]
    assert (out / "boundary_map.png").is_file()
    assert read_claims(out) == []


def test_probe_map_reads_mqar_at_the_lr_probe_mqar_chose():
    mqar_columns = get_experiment("probe_map").mqar_columns
    cell = {"seq_len": 24, "pairs": 2, "width": 16, "mixer": "gla", "diverged": False}
    rows = [dict(cell, lr=1e-2, seed=0, accuracy=0.9, final_loss=2.0),  # tests better, trains worse
            dict(cell, lr=3e-3, seed=0, accuracy=0.5, final_loss=1.0),
            dict(cell, lr=3e-3, seed=1, accuracy=0.7, final_loss=1.1)]
    cols, why = mqar_columns({"config": {"claim_cell": [24, 2, 16], "vocab": 16, "steps": 4}, "rows": rows})
    assert why == "" and list(cols.values()) == [{"gla": pytest.approx(0.6)}]


def test_probe_map_with_nothing(tmp_path):
    out = run_experiment("probe_map", budget="smoke", overrides={
        "roles": str(tmp_path / "a.json"), "lag": str(tmp_path / "b.json"), "mqar": f'["{tmp_path / "c.json"}"]'},
        out=tmp_path / "map")
    assert "nothing to draw" in (out / "README.md").read_text()


@pytest.mark.parametrize("probe", ["best", "lda"])
def test_probe_depth_records_and_counts_the_probe_each_fit_used(probe, tmp_path):
    out = run_experiment("probe_depth", budget="smoke", overrides={"probe": probe}, out=tmp_path / probe)
    res = json.loads((out / "depth.json").read_text())
    cfg = res["config"]
    cells = [s[m][str(L)] for s in res["per_seed"] for m in cfg["mechanisms"] for L in cfg["depths"]]
    assert all(len(c["probes"]) == len(c["bits"]) for c in cells)
    chosen = {p for c in cells for p in c["probes"]}
    readme = (out / "README.md").read_text()
    if probe == "best":
        assert chosen <= {"lda", "lbfgs"}
        n = sum(len(c["probes"]) for c in cells)
        assert f"of {n} fits, LDA in the rest" in readme
    else:
        assert chosen == {"lda"} and "Probe `best`" not in readme


def test_probe_configs_reject_bad_fields():
    lag = get_experiment("probe_lag")
    with pytest.raises(ValueError, match="claim_lag"):
        lag.Config(lags=(1, 2), claim_lag=64)
    mqar = get_experiment("probe_mqar")
    with pytest.raises(ValueError, match="claim_cell"):
        mqar.Config(claim_cell=(999, 4, 64))
    with pytest.raises(ValueError, match=r"unknown mixer 'nope'; choose one of \[.*'ema'"):
        mqar.Config(mixers=("ema", "nope"))  # before any of the grid trains
    assert all(T >= 3 * N for T, N, _ in mqar.gpu().cells())


def test_mqar_parallel_runs_the_same_jobs_and_a_rerun_skips_them(tmp_path, capsys):
    mqar = get_experiment("probe_mqar")
    cfg = mqar.Config(mixers=("ema", "gla"), vocab=16, seq_lens=(24,), pairs=(2, 4), widths=(16,), lrs=(1e-2, 3e-2),
                      steps=2, batch=2, n_test=4, seeds=2, claim_cell=(24, 2, 16), device="cpu", parallel=2)
    mqar.run(cfg, tmp_path)
    rows = json.loads((tmp_path / "mqar.json").read_text())["rows"]
    keys = sorted((r["mixer"], r["pairs"], r["lr"], r["seed"]) for r in rows)
    # the claim cell's lr grid, one more seed at each mixer's best lr, and the other cell's grid
    grid = [(m, n, lr, 0) for m in ("ema", "gla") for n in (2, 4) for lr in (1e-2, 3e-2)]
    assert len(keys) == len(set(keys)) == len(grid) + 2
    assert set(grid) <= set(keys)
    assert {(m, s) for m, n, _, s in keys if s == 1} == {("ema", 1), ("gla", 1)}
    capsys.readouterr()
    # neither parallel nor gla's kernel is part of what was measured
    mqar.run(dataclasses.replace(cfg, parallel=1, gla_backend="torch"), tmp_path)
    assert "acc" not in capsys.readouterr().out
    again = json.loads((tmp_path / "mqar.json").read_text())
    assert len(again["rows"]) == len(keys)
    assert again["resumed_from"] == [again["git_sha"]]  # the first run's commit, kept
    with pytest.raises(ValueError, match="parallel must be >= 1"):
        dataclasses.replace(cfg, parallel=0)
    with pytest.raises(ValueError, match=r"unknown gla_backend 'fla'; choose one of \[.*'torch'"):
        dataclasses.replace(cfg, gla_backend="fla")
    assert {r["gla_backend"] for r in rows if r["mixer"] == "gla"} == {"torch"}


def test_mqar_with_one_lr_runs_every_seed_and_draws_the_claim_cells_curves(tmp_path):
    mqar = get_experiment("probe_mqar")
    cfg = mqar.Config(mixers=("ema", "selective"), vocab=16, seq_lens=(24,), pairs=(2,), widths=(16,), lrs=(1e-2,),
                      steps=4, batch=2, n_test=4, seeds=3, claim_cell=(24, 2, 16), device="cpu")
    mqar.run(cfg, tmp_path)
    mqar.report(tmp_path)
    res = json.loads((tmp_path / "mqar.json").read_text())
    want = [(m, s) for m in ("ema", "selective") for s in range(3)]
    assert sorted((r["mixer"], r["seed"]) for r in res["rows"]) == want
    assert all(len(r["loss_curve"]) == 4 and r["curve_every"] == 1 for r in res["rows"])
    assert (tmp_path / "mqar_curves.png").is_file() and "mqar_curves.png" in (tmp_path / "README.md").read_text()
    for r in res["rows"]:  # rows of runs made before curves were kept: no figure, and no link to one
        del r["loss_curve"], r["curve_every"]
    (tmp_path / "mqar.json").write_text(json.dumps(res))
    mqar.report(tmp_path)
    assert not (tmp_path / "mqar_curves.png").exists() and "mqar_curves" not in (tmp_path / "README.md").read_text()


def test_mqar_claim_pairs_mixers_by_seed_whatever_order_the_runs_finished_in(tmp_path):
    mqar = get_experiment("probe_mqar")
    cfg = mqar.Config(mixers=("ema", "gla"), vocab=16, seq_lens=(24,), pairs=(2,), widths=(16,), lrs=(1e-2,),
                      steps=4, batch=2, n_test=4, seeds=3, claim_cell=(24, 2, 16), device="cpu")
    acc = {("ema", 0): 0.10, ("ema", 1): 0.30, ("ema", 2): 0.20, ("gla", 0): 0.95, ("gla", 1): 0.99, ("gla", 2): 0.90}
    order = [("gla", 2), ("ema", 1), ("gla", 0), ("ema", 2), ("ema", 0), ("gla", 1)]  # as parallel runs finish
    rows = [{"mixer": m, "seed": s, "seq_len": 24, "pairs": 2, "width": 16, "lr": 1e-2, "accuracy": acc[(m, s)],
             "steps": 4, "seconds": 1.0} for m, s in order]
    (tmp_path / "mqar.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), "rows": rows,
                                                    "device": "cpu", "wall_seconds": 1.0}))
    mqar.report(tmp_path)
    (claim,) = read_claims(tmp_path)
    diffs = [acc[("gla", s)] - acc[("ema", s)] for s in range(3)]  # 0.85, 0.69, 0.70
    assert claim.ours == pytest.approx(sum(diffs) / 3)
    assert claim.std == pytest.approx(float(torch.tensor(diffs, dtype=torch.float64).std()))


def test_best_lr_run_is_chosen_on_training_loss_never_on_the_reported_accuracy():
    from emaprobe.probes.recall import best_lr_run, choice_loss

    low_loss = {"lr": 3e-3, "accuracy": 0.20, "final_loss": 1.5, "diverged": False}
    high_acc = {"lr": 1e-2, "accuracy": 0.90, "final_loss": 1.7, "diverged": False}
    assert best_lr_run([high_acc, low_loss]) is low_loss
    diverged = {"lr": 1e-1, "accuracy": 0.0, "final_loss": 0.1, "diverged": True}  # low loss before it blew up
    nan = {"lr": 3e-1, "accuracy": 0.0, "final_loss": float("nan"), "diverged": False}
    assert choice_loss(diverged) == choice_loss(nan) == float("inf")
    assert best_lr_run([diverged, nan, high_acc]) is high_acc
    tie = dict(low_loss, lr=1e-3)
    assert best_lr_run([low_loss, tie])["lr"] == 1e-3 == best_lr_run([tie, low_loss])["lr"]  # whatever the order
    with pytest.raises(ValueError, match="at least one"):
        best_lr_run([])


def test_mqar_runs_and_reports_the_claim_seeds_at_the_lr_of_lowest_training_loss(tmp_path, monkeypatch):
    mqar = get_experiment("probe_mqar")
    cfg = mqar.Config(mixers=("ema", "gla"), vocab=16, seq_lens=(24,), pairs=(2,), widths=(16,), lrs=(3e-3, 1e-2),
                      steps=4, batch=2, n_test=4, seeds=3, claim_cell=(24, 2, 16), device="cpu")

    def fake_train(model, task, steps, lr, seed, **kw):  # lr 1e-2 tests better but trains worse
        return {"accuracy": 0.5 + (0.3 if lr == 1e-2 else 0.0) + 0.01 * seed, "final_loss": 2.0 if lr == 1e-2 else 1.0,
                "diverged": False, "steps": steps, "seconds": 0.0, "resumed_at": 0}

    monkeypatch.setattr(mqar, "train_recall", fake_train)
    mqar.run(cfg, tmp_path)
    rows = json.loads((tmp_path / "mqar.json").read_text())["rows"]
    assert sorted((r["mixer"], r["lr"], r["seed"]) for r in rows if r["seed"] > 0) == [
        (m, 3e-3, s) for m in ("ema", "gla") for s in (1, 2)]
    assert {k: r["lr"] for k, r in mqar.best_per_cell(rows).items()} == {("ema", 24, 2, 16): 3e-3,
                                                                          ("gla", 24, 2, 16): 3e-3}
    mqar.report(tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "- gla: 0.510 ± 0.010 (lr 0.003, n=3" in readme and "0.800 (0.01)" not in readme


def test_mqar_claim_takes_the_input_dependent_mixer_that_trained_better_not_the_one_that_tested_better(tmp_path):
    mqar = get_experiment("probe_mqar")
    cfg = mqar.Config(mixers=("ema", "selective", "gla"), vocab=16, seq_lens=(24,), pairs=(2,), widths=(16,),
                      lrs=(1e-2,), steps=4, batch=2, n_test=4, seeds=2, claim_cell=(24, 2, 16), device="cpu")
    score = {"ema": (0.1, 3.0), "selective": (0.5, 1.0), "gla": (0.9, 2.0)}  # (test accuracy, training loss)
    rows = [{"mixer": m, "seed": s, "seq_len": 24, "pairs": 2, "width": 16, "lr": 1e-2, "accuracy": a + 0.01 * s,
             "final_loss": loss, "diverged": False, "steps": 4, "seconds": 1.0}
            for m, (a, loss) in score.items() for s in range(2)]
    (tmp_path / "mqar.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), "rows": rows,
                                                    "device": "cpu", "wall_seconds": 1.0}))
    mqar.report(tmp_path)
    (claim,) = read_claims(tmp_path)
    assert claim.metric.startswith("MQAR accuracy, selective minus ema") and claim.ours == pytest.approx(0.4)


def test_mqar_run_stopped_part_way_goes_on_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    import emaprobe.probes.recall as recall

    mqar = get_experiment("probe_mqar")
    cfg = mqar.Config(mixers=("ema",), vocab=16, seq_lens=(24,), pairs=(2,), widths=(16,), lrs=(1e-2,),
                      steps=250, batch=2, n_test=4, seeds=1, claim_cell=(24, 2, 16), device="cpu")
    step, calls = recall.recall_step, []

    def stop_at_step_230(*a):
        calls.append(1)
        if len(calls) > 230:
            raise KeyboardInterrupt
        return step(*a)

    monkeypatch.setattr(recall, "recall_step", stop_at_step_230)
    with pytest.raises(KeyboardInterrupt):
        mqar.run(cfg, tmp_path)
    assert [p.name for p in (tmp_path / "partial").iterdir()] == ["ema_T24_N2_D16_lr0.01_seed0.pt"]
    monkeypatch.setattr(recall, "recall_step", step)
    capsys.readouterr()
    mqar.run(cfg, tmp_path)
    assert "resumed at step 200" in capsys.readouterr().out
    (row,) = json.loads((tmp_path / "mqar.json").read_text())["rows"]
    assert row["resumed_at"] == 200 and row["steps"] == 250
    assert list((tmp_path / "partial").iterdir()) == []  # deleted once the row was saved
    calls.clear()
    monkeypatch.setattr(recall, "recall_step", stop_at_step_230)
    with pytest.raises(KeyboardInterrupt):
        mqar.run(dataclasses.replace(cfg, lrs=(3e-2,)), tmp_path / "other")
    monkeypatch.setattr(recall, "recall_step", step)
    other = dataclasses.replace(cfg, lrs=(3e-2,), steps=240)  # another config: the old checkpoint cannot go on
    mqar.run(other, tmp_path / "other")
    (row,) = json.loads((tmp_path / "other" / "mqar.json").read_text())["rows"]
    assert row["resumed_at"] == 0 and row["steps"] == 240


def test_mqar_run_that_fails_in_a_worker_leaves_the_others_running(tmp_path, capsys):
    mqar = get_experiment("probe_mqar")
    cfg = mqar.Config(mixers=("ema", "selective"), vocab=16, seq_lens=(24,), pairs=(2,), widths=(16,), lrs=(1e-2,),
                      steps=2, batch=2, n_test=4, seeds=1, claim_cell=(24, 2, 16), device="cpu", parallel=2)
    mqar.run(cfg, tmp_path)
    res = json.loads((tmp_path / "mqar.json").read_text())
    res["rows"] = []  # as if neither run had finished, and one had left an unreadable checkpoint
    (tmp_path / "mqar.json").write_text(json.dumps(res))
    bad = tmp_path / "partial" / "ema_T24_N2_D16_lr0.01_seed0.pt"
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    with pytest.raises(RuntimeError, match=r"1 of 2 runs failed(.|\n)*ema T=24 N=2 D=16 lr=0.01 seed 0: ValueError"
                                           r"(.|\n)*not a readable MQAR checkpoint(.|\n)*resumes from its checkpoint"):
        mqar.run(cfg, tmp_path)
    assert "FAILED ema" in capsys.readouterr().out
    rows = json.loads((tmp_path / "mqar.json").read_text())["rows"]
    assert [r["mixer"] for r in rows] == ["selective"]  # the other run finished and was saved
    assert bad.read_bytes() == b"not a checkpoint"  # nothing the user may want is deleted
    bad.unlink()
    mqar.run(cfg, tmp_path)  # the rerun goes on with the failed run alone
    assert sorted(r["mixer"] for r in json.loads((tmp_path / "mqar.json").read_text())["rows"]) == ["ema", "selective"]


def _recall_run(lr: float, check_every: int) -> dict:
    torch.manual_seed(0)
    model = RecallModel(RecallModelConfig(mixer="ema", d_model=16, vocab=32, seq_len=24))
    return train_recall(model, MQARConfig(32, 24, 4), 9, lr, seed=0, batch=2, n_test=4, check_every=check_every)


def test_train_recall_reads_the_loss_back_in_batches_without_changing_the_run():
    one, four = _recall_run(1e-2, 1), _recall_run(1e-2, 4)  # 9 steps: checks at 4, 8 and the last step
    assert one["steps"] == four["steps"] == 9 and not one["diverged"]
    assert one["final_loss"] == four["final_loss"] and one["accuracy"] == four["accuracy"]
    assert one["loss_curve"] == four["loss_curve"] and len(one["loss_curve"]) == 9  # 9 steps: windows of 1


def test_train_recall_stops_at_the_first_check_after_a_non_finite_loss():
    r = _recall_run(1e12, 4)
    assert r["diverged"] and r["accuracy"] == 0.0
    assert r["steps"] < 9  # the finite losses before the first non-finite one


def _recall_model() -> RecallModel:
    torch.manual_seed(0)
    return RecallModel(RecallModelConfig(mixer="selective", d_model=16, vocab=32, seq_len=24, rank=4))


def test_train_recall_resumed_from_its_checkpoint_ends_where_an_unbroken_run_does(tmp_path, monkeypatch):
    import emaprobe.probes.recall as recall

    task, ck = MQARConfig(32, 24, 4), tmp_path / "run.pt"
    args = dict(steps=10, lr=1e-2, seed=3, batch=2, n_test=8, check_every=3)
    whole_model = _recall_model()
    whole = train_recall(whole_model, task, **args)
    step, calls = recall.recall_step, []

    def killed_at_step_7(*a):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt  # as a timeout would stop it, after the check at step 6
        return step(*a)

    monkeypatch.setattr(recall, "recall_step", killed_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        train_recall(_recall_model(), task, checkpoint=ck, **args)
    monkeypatch.setattr(recall, "recall_step", step)
    assert torch.load(ck, weights_only=True)["step"] == 6
    resumed_model = _recall_model()
    resumed = train_recall(resumed_model, task, checkpoint=ck, **args)
    assert resumed["resumed_at"] == 6 and whole["resumed_at"] == 0
    assert resumed["steps"] == whole["steps"] == 10
    assert (resumed["accuracy"], resumed["final_loss"]) == (whole["accuracy"], whole["final_loss"])
    assert resumed["loss_curve"] == whole["loss_curve"]  # the steps before the stop come from the checkpoint
    for a, b in zip(whole_model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


def test_train_recall_resumes_under_another_gla_kernel(tmp_path):
    """The GLA kernel is how the model is computed, not what it is: its checkpoint carries over."""
    task, ck = MQARConfig(32, 24, 4), tmp_path / "run.pt"

    def gla(kernel: str) -> RecallModel:
        torch.manual_seed(0)
        return RecallModel(RecallModelConfig(mixer="gla", d_model=16, vocab=32, seq_len=24, key_dim=4, rank=4,
                                             gla_backend=kernel))

    train_recall(gla("torch"), task, 4, 1e-2, seed=0, batch=2, n_test=4, check_every=2, checkpoint=ck)
    r = train_recall(gla("naive"), task, 4, 1e-2, seed=0, batch=2, n_test=4, check_every=2, checkpoint=ck)
    assert r["resumed_at"] == 2 and r["steps"] == 4


def test_train_recall_compiled_trains_the_same_model():
    runs = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        model = RecallModel(RecallModelConfig(mixer="attention", d_model=16, vocab=32, seq_len=24, key_dim=4))
        runs.append(train_recall(model, MQARConfig(32, 24, 4), 3, 1e-2, seed=0, batch=4, n_test=8, compile=compile_))
    eager, compiled = runs
    assert compiled["steps"] == eager["steps"] == 3
    assert compiled["final_loss"] == pytest.approx(eager["final_loss"], rel=1e-5)


def test_train_recall_refuses_the_checkpoint_of_another_run(tmp_path):
    task, ck = MQARConfig(32, 24, 4), tmp_path / "run.pt"
    train_recall(_recall_model(), task, 4, 1e-2, seed=0, batch=2, n_test=4, check_every=2, checkpoint=ck)
    assert ck.is_file()  # saved at the check after step 2; the caller deletes it once the result is safe
    with pytest.raises(ValueError, match="another run.*lr"):
        train_recall(_recall_model(), task, 4, 3e-2, seed=0, batch=2, n_test=4, checkpoint=ck)
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable MQAR checkpoint"):
        train_recall(_recall_model(), task, 4, 1e-2, seed=0, batch=2, n_test=4, checkpoint=ck)
    assert ck.read_bytes() == b"not a checkpoint"  # refused, not removed


def test_recall_queries_by_count_match_the_mask_values_and_gradients():
    torch.manual_seed(0)
    model = RecallModel(RecallModelConfig(mixer="gla", d_model=16, vocab=32, seq_len=29, key_dim=4, rank=4))
    b = mqar_batch(MQARConfig(32, 29, 5), 3, seed=1)
    outs = []
    for n in (None, 5):
        model.zero_grad()
        logits, y = model(b.tokens, b.labels, n)
        torch.nn.functional.cross_entropy(logits, y).backward()
        outs.append((logits, y, [p.grad.clone() for p in model.parameters()]))
    (l0, y0, g0), (l1, y1, g1) = outs
    assert torch.equal(y0, y1) and l1.shape == (15, 32)
    torch.testing.assert_close(l0, l1, rtol=0, atol=0)
    for a, c in zip(g0, g1):
        torch.testing.assert_close(a, c)


@pytest.mark.parametrize("width", [1, 3, 4])
def test_recall_short_conv_is_the_causal_depthwise_conv(width):
    """The shifted multiply-adds against ``nn.Conv1d`` on the transposed input, tail dropped:
    values and every gradient, float64, odd sizes; and under CPU autocast, the conv's dtype."""
    torch.manual_seed(0)
    blk = RecallBlock(RecallModelConfig(mixer="ema", d_model=7, short_conv=width)).double()
    outs = []
    for fn in (lambda u: blk.conv(u.transpose(1, 2))[..., : u.shape[1]].transpose(1, 2), blk.short_conv):
        blk.zero_grad()
        u = torch.randn(3, 11, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y = fn(u)
        (y * torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))).sum().backward()
        outs.append((y, u.grad, blk.conv.weight.grad.clone(), blk.conv.bias.grad.clone()))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert blk.float().short_conv(torch.randn(2, 5, 7)).dtype == torch.bfloat16


@pytest.mark.parametrize("mixer", ["ema", "selective", "gla", "attention"])
def test_recall_model_is_causal(mixer):
    torch.manual_seed(0)
    model = RecallModel(RecallModelConfig(mixer=mixer, d_model=16, vocab=32, seq_len=24, key_dim=4, rank=4)).eval()
    b = mqar_batch(MQARConfig(32, 24, 4), 2, seed=0)
    logits, y = model(b.tokens, b.labels)
    assert logits.shape == (int((b.labels != IGNORE).sum()), 32) and y.shape == logits.shape[:1]
    # change the last token: nothing before it may move
    tok2 = b.tokens.clone()
    tok2[:, -1] = (tok2[:, -1] + 1) % 32
    lab = b.labels.clone()
    lab[:, -1] = IGNORE
    with torch.no_grad():
        a, _ = model(b.tokens, lab)
        c, _ = model(tok2, lab)
    torch.testing.assert_close(a, c)


def test_depth_stacks_follow_their_formulas():
    z = torch.randint(0, 8, (5, 3))
    res = DepthStack("residual", 3, 8, 4, seed=1)
    ema = DepthStack("ema_depth", 3, 8, 4, beta=0.5, seed=1)
    gates = DepthStack("learned_gates", 3, 8, 4, seed=1)
    e = res.emb[torch.arange(3)[None, :], z]  # (N, L, D)
    torch.testing.assert_close(res(z), e.sum(1))
    torch.testing.assert_close(ema(z), 0.125 * e[:, 0] + 0.25 * e[:, 1] + 0.5 * e[:, 2])
    torch.testing.assert_close(gates(z), res(z))  # the gates start as the plain residual
    assert train_gates(gates, 8, steps=3)
    with pytest.raises(ValueError, match="unknown depth mechanism"):
        DepthStack("highway", 2, 8, 4)


def test_mixer_states_shape_and_positions():
    emb = torch.randn(10, 8)
    tok = torch.randint(0, 10, (3, 20))
    pos = torch.arange(15, 20)
    for name in ("ema", "attention"):
        m = build_probe_mixer(name, 8, (0.5, 0.1), key_dim=4)
        f = mixer_states(m, name, emb, tok, pos, chunk=2)
        assert f.shape == (3, 5, 16)


def test_block_and_residual_states_of_tiny_models():
    from emaprobe.models import build_model

    for cfg in ("spen-tiny", "gpt-tiny"):
        model = build_model(cfg, vocab_size=50, d_model=16, n_layer=2, **({"d_bottleneck": 8, "d_ff": 32, "n_head": 2}
                                                                          if cfg.startswith("spen") else
                                                                          {"n_head": 2, "d_ff": 32}))
        idx = torch.randint(0, 50, (2, 9))
        bs = block_states(model, idx)
        rs = residual_states(model, idx)
        assert len(bs) == 2 and len(rs) == 3
        assert all(r.shape == (2, 9, 16) for r in rs)
        logits, _ = model(idx)
        # the last residual state, through the final norm and tied head, gives the model's logits
        norm = model.norm_f if cfg.startswith("spen") else model.ln_f
        torch.testing.assert_close(torch.nn.functional.linear(norm(rs[-1]), model.tok_emb.weight), logits,
                                   rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="SPEN and GPT"):
        block_states(torch.nn.Linear(2, 2), idx)
