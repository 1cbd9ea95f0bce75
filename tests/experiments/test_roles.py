"""The roles experiment: protocol, the smoke run's JSON, report and claims; the alias CLI; bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from emaprobe.cli import main
from emaprobe.experiments import roles
from emaprobe.experiments.protocol import config_for, get_experiment, read_claims
from emaprobe.experiments.roles import MODELS, aggregate, deep_margins, score, smoke
from emaprobe.models.hebbian import FixedEmbeddings, HebbianVote
from emaprobe.tasks.grammar import resolve_grammar_path
from emaprobe.tasks.role_data import label_budget
from emaprobe.tasks.sentence import RoleSentence
from emaprobe.utils import config_to_dict

CLAIM_IDS = {"hebbian_over_bigru_within_a", "deep_hebbian_beats_bigru", "transfer_b"}


def _check_result(result: dict, sets: set[str]) -> None:
    assert set(result["aggregate"]) == sets
    for name in sets:
        for model in MODELS:
            entry = result["aggregate"][name][model]
            assert 0.0 <= entry["accuracy"]["mean"] <= 1.0
            assert {"per_role", "per_depth", "per_construction"} <= set(entry)
    assert set(result["ratio_within_a"]) == {"hebbian", "hebbian_causal", "two_stage", "two_stage_causal"}
    assert {"git_sha", "argv", "time_utc"} <= set(result["run"])
    assert result["config"]["hebbian"]["mapping"] == "hungarian"
    assert result["config"]["two_stage"]["train_on"] in ("nouns", "tokens")
    assert result["seeds"] == [0]
    curve = result["curve"]
    assert list(curve["labels"]) == ["25", "50", "all"]
    assert [curve["labels"][k]["mean"] for k in ("25", "50")] == [25, 50]  # exact budgets
    for method in ("two_stage", "probe", "bigru"):
        assert set(curve["sets"]["within_a"][method]) == {"25", "50", "all"}
        assert "structural" in curve["sets"]["deep"][method]["25"]
    ceiling = result["naming_ceiling"]  # the two-stage units named by each set's own roles
    assert set(ceiling) == sets and "structural" in ceiling["deep"]
    seed0 = result["per_seed"][0]
    for name in sets:
        assert ceiling[name]["ratio_to_bigru"]["mean"] == pytest.approx(
            seed0["naming_ceiling"][name]["accuracy"] / seed0["results"][name]["bigru"]["accuracy"])


def test_roles_follows_the_protocol():
    exp = get_experiment("roles")
    assert exp.NAME == "roles" and exp.Config is roles.Config
    cfg = config_for(exp, "smoke", {"seeds": "2", "two_stage.n_units": "10"})
    assert cfg.seeds == 2 and cfg.two_stage.n_units == 10 and cfg.data.n_train <= 500
    with pytest.raises(ValueError, match="budgets"):
        roles.Config(budgets=(50, 25))


def test_smoke_via_run_writes_json_report_plots_and_claims(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out = tmp_path / "roles"
    assert main(["run", "roles", "--smoke", "--set", "treebank=", "--out", str(out)]) == 0
    result = json.loads((out / "roles.json").read_text())
    _check_result(result, {"within_a", "transfer_b", "deep"})
    assert "structural" in result["aggregate"]["deep"]["bigru"]
    table = (out / "README.md").read_text()
    assert "paper" in table and "61.8" in table and "within-A" in table and "## Targets" in table
    assert "### Naming's ceiling" in table and "named by the within-A test set's own roles" in table
    assert (out / "roles.png").stat().st_size > 1000 and (out / "roles_budget.png").stat().st_size > 1000
    rows = {c.claim: c for c in read_claims(out)}
    assert CLAIM_IDS <= set(rows)
    for c in rows.values():
        assert c.labels and c.labels != "n/a" and c.verdict == "inconclusive"  # one seed decides nothing
    assert rows["transfer_b"].paper == 61.8 and rows["hebbian_over_bigru_within_a"].paper == 0.96
    # the command that made these numbers: the smoke budget and its override, not the committed 5-seed run's
    assert {c.command for c in rows.values()} == {f"emaprobe run roles --smoke --set treebank= --out {out}"}
    assert "named by the within-A test set's own roles" in rows["hebbian_over_bigru_within_a"].note
    # report() reads only the JSON: delete the outputs and rebuild them
    for name in ("README.md", "claims.json", "roles.png"):
        (out / name).unlink()
    roles.report(out)
    assert (out / "claims.json").exists() and (out / "README.md").read_text() == table
    with pytest.raises(FileNotFoundError, match="roles.json"):
        roles.report(tmp_path / "nothing")


def test_alias_cli_counts_unseen_tokens_of_an_eval_grammar(tmp_path, capsys):
    out = tmp_path / "roles"
    grammar_b = resolve_grammar_path("grammar_b")
    rc = main(["roles", "--smoke", "--no-treebank", "--quiet", "--out", str(out), "--eval-grammar", str(grammar_b)])
    assert rc == 0
    result = json.loads((out / "roles.json").read_text())
    assert "eval:grammar_b" in result["aggregate"]
    unseen = result["unseen"]["eval:grammar_b"]
    assert unseen["unseen_tokens"]["mean"] > 0  # "," "it" "which" "did" never occur in grammar A
    assert result["unseen"]["within_a"]["unseen_tokens"]["mean"] == 0
    printed = capsys.readouterr().out
    assert "eval:grammar_b:" in printed and "unseen in training" in printed
    assert "ratio two_stage/bigru" in printed
    assert "naming's ceiling" in printed and "eval:grammar_b " in printed.split("naming's ceiling")[1]


def test_alias_cli_default_out_is_runs_roles():
    from emaprobe.cli import build_parser

    args = build_parser().parse_args(["roles"])
    assert args.out is None  # resolved to protocol.default_out("roles") == runs/roles
    from emaprobe.experiments.protocol import default_out

    assert str(default_out("roles")) == "runs/roles"


def test_smoke_on_the_treebank(tmp_path, shared_data):
    out = tmp_path / "roles"
    rc = main(["roles", "--smoke", "--quiet", "--out", str(out), "--treebank", str(shared_data / "ud-english-ewt")])
    assert rc == 0
    result = json.loads((out / "roles.json").read_text())
    assert "ud_test" in result["aggregate"] and result["curve_ud"] is not None
    assert set(result["aggregate"]["ud_test"]["majority"]["per_role"]) <= {"AGENT", "PATIENT", "RECIPIENT"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "0"], "--seeds"),
        (["--eval-grammar", "/nonexistent/g.yaml"], "no such file"),
        (["--treebank", "/nonexistent/ud"], "not a folder"),
        (["--set", "hebbian.n_unitz=4"], "n_unitz"),
        (["--set", "hebbian.directions=sideways"], "sideways"),
        (["--set", "two_stage.train_on=scored"], "train_on"),
        (["--set", "nonsense"], "FIELD=VALUE"),
        (["--treebank", "/nonexistent/ud", "--no-treebank"], "--treebank DIR and --no-treebank contradict each other"),
        (["--seeds", "1", "--set", "seeds=2"], "--seeds and --set seeds=2 both set seeds; give one"),
        # a nested seed is overwritten by the experiment seed, so roles.json would name a seed that did nothing
        (["--set", "data.seed=7"], "data.seed=7: nested seeds are set from the experiment seed"),
        (["--set", "hebbian.seed=7"], "hebbian.seed=7: nested seeds"),
        (["--set", "two_stage.seed=1"], "two_stage.seed=1: nested seeds"),
        (["--set", "bigru.seed=2"], "choose seeds with first_seed and seeds"),
        # grammar A has no clause at depth 2: refused before any training, not at aggregation
        (["--set", "data.deep_grammar=grammar_a"], "deep grammar 'grammar_a'"),
    ],
)
def test_bad_arguments_give_one_line_errors(tmp_path, capsys, args, message):
    no_treebank = [] if "--treebank" in args else ["--no-treebank"]
    rc = main(["roles", "--smoke", *no_treebank, "--quiet", "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x" / "roles.json").exists()


def test_score_counts_per_role_depth_and_construction():
    s = RoleSentence(("the", "dog", "saw", "the", "cat"), ("-", "AGENT", "-", "-", "PATIENT"),
                     (0, 0, 0, 1, 1), (0, 0, 0, 2, 2), ("act", "act", "act", "rel", "rel"))
    r = score([s], ["AGENT", "AGENT"])
    assert r["accuracy"] == 0.5
    assert r["per_role"]["PATIENT"] == {"accuracy": 0.0, "n": 1}
    assert r["per_depth"]["0"]["accuracy"] == 1.0
    assert r["per_construction"]["rel"]["accuracy"] == 0.0
    assert r["structural"]["accuracy"] == 0.0 and r["structural"]["n"] == 1
    with pytest.raises(ValueError, match="predictions"):
        score([s], ["AGENT"])
    agg = aggregate([{"results": {"x": {"m": r}}}, {"results": {"x": {"m": score([s], ["AGENT", "PATIENT"])}}}])
    assert agg["x"]["m"]["accuracy"]["mean"] == pytest.approx(0.75)
    assert agg["x"]["m"]["accuracy"]["std"] > 0


def test_smoke_config_is_small():
    cfg = smoke()
    assert cfg.seeds == 1 and cfg.data.n_train <= 500 and len(cfg.budgets) <= 3


def test_label_budget_is_exact_nested_and_seeded():
    from emaprobe.tasks.role_data import make_splits

    val = make_splits(seed=0, n_train=10, n_val=60, n_test=10).val
    total = sum(r != "-" for s in val for r in s.roles)
    for n in (1, 7, 25, total):
        picked = label_budget(val, n, seed=3)
        assert sum(r != "-" for s in picked for r in s.roles) == n
    small, big = label_budget(val, 10, 3), label_budget(val, 40, 3)
    assert [s.text for s in small[:-1]] == [s.text for s in big[: len(small) - 1]]
    assert label_budget(val, 10, 3) == small and label_budget(val, 10, 4) != small
    assert label_budget(val, None, 3) == list(val)
    with pytest.raises(ValueError, match="exceeds"):
        label_budget(val, total + 1, 0)
    with pytest.raises(ValueError, match=">= 1"):
        label_budget(val, 0, 0)


def test_an_interrupted_run_keeps_its_finished_seeds_and_only_those_of_its_own_settings(tmp_path, monkeypatch, capsys):
    cfg = dataclasses.replace(smoke(), seeds=2, workers=1, treebank="")
    real, calls = roles.run_seed, []

    def interrupted_at_seed_1(c, seed, quiet=True):
        calls.append(seed)
        if seed == 1 and calls.count(1) == 1:
            raise KeyboardInterrupt  # Ctrl-C while seed 1 runs
        return real(c, seed, quiet=quiet)

    monkeypatch.setattr(roles, "run_seed", interrupted_at_seed_1)
    out = tmp_path / "roles"
    with pytest.raises(KeyboardInterrupt):
        roles.run(cfg, out)
    assert (out / "partial" / "seed-0.json").is_file() and not (out / "roles.json").exists()
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # output captured, so not a terminal: a line a seed, not a bar
    resumed = roles.run(cfg, out)
    assert calls == [0, 1, 1]  # seed 0 was kept, not computed again
    printed = capsys.readouterr().out
    assert "1 of 2 seeds kept" in printed and "roles: seed 1 done, 2 of 2" in printed
    assert not (out / "partial").exists()  # roles.json holds every seed now
    fresh = roles.run(cfg, tmp_path / "fresh")
    for key in ("aggregate", "curve", "naming_ceiling", "ratio_within_a", "deep_margin"):
        assert resumed[key] == fresh[key], key
    # a seed saved by other settings is computed again, never mixed in
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        roles.run(cfg, out)
    other = dataclasses.replace(cfg, two_stage=dataclasses.replace(cfg.two_stage, n_units=9), seeds=3, workers=2)

    def refused(*_args, **_kw):
        raise RuntimeError("a seed worker ran this process's patched run_seed: it was forked, not spawned")

    # Workers are spawned, so nothing of this process reaches them: not this patch, and not, where CUDA
    # exists, the context run_record starts here, which a forked worker's optimizer step would touch.
    monkeypatch.setattr(roles, "run_seed", refused)
    result = roles.run(other, out)  # seeds 0-2 in two worker processes, each saved as it arrives
    assert calls == [0, 1]  # the workers' calls are their own; none of them ran here
    assert "made by other code or settings: seed 0" in capsys.readouterr().out
    assert [r["seed"] for r in result["per_seed"]] == [0, 1, 2] and not (out / "partial").exists()
    assert result["config"]["two_stage"]["n_units"] == 9


COMMITTED = Path(__file__).resolve().parents[2] / "results" / "roles"
needs_committed = pytest.mark.skipif(not (COMMITTED / "roles.json").is_file(),
                                     reason="needs the committed results/ (an installed package has none)")


@needs_committed
def test_the_committed_claims_keep_their_command():
    result = json.loads((COMMITTED / "roles.json").read_text())
    committed = {c["command"] for c in json.loads((COMMITTED / "claims.json").read_text())}
    assert committed == {roles.rerun_command(result, Path("results/roles"))}


@needs_committed
def test_a_smoke_run_into_a_copy_of_the_committed_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "roles"
    shutil.copytree(COMMITTED, out)
    before = (out / "roles.json").read_bytes()
    assert main(["run", "roles", "--smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'roles.json'} holds roles results made with other settings" in err
    assert "seeds: 5 there, 1 now" in err and "--overwrite" in err
    assert main(["run", "roles", "--report-only", "--set", "seeds=abc", "--out", str(out)]) == 2
    assert "--set would be ignored" in capsys.readouterr().err
    assert (out / "roles.json").read_bytes() == before


def test_a_corrupt_roles_json_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "roles.json").write_text('{"broken')
    with pytest.raises(ValueError, match=r"roles.json: malformed JSON at line 1"):
        roles.report(tmp_path)


def test_the_curve_names_a_hungarian_learner_whose_spare_units_predict_no_role():
    # one-to-one naming names 3 of K units; a token won by another unit gets no role (scored wrong), as
    # HebbianVote.predict does, instead of a KeyError after all the training
    cfg = smoke()
    ts = dataclasses.replace(cfg.two_stage, mapping="hungarian", members=1, epochs=1, class_restarts=1)
    cfg = dataclasses.replace(cfg, two_stage=ts, budgets=(25,))
    data = dataclasses.replace(cfg.data, n_train=150, n_val=60, n_test=40).build()
    emb = FixedEmbeddings.from_sentences(data.train, cfg.bigru.dim, 0)
    learner = HebbianVote(ts, emb).fit(data.train)
    curve = roles.label_curve(cfg, 0, emb, learner, data.val, {"within_a": data.test_a})
    named = learner.namings(data.val)[0]
    assert len(named) == 3 < ts.n_units
    assert set(curve["sets"]["within_a"]["two_stage"]) == {"25", "all"}


def test_a_deep_grammar_without_depth_2_is_refused_before_training(tmp_path, monkeypatch):
    def trained(*_args, **_kw):
        raise AssertionError("a seed was trained")

    monkeypatch.setattr(roles, "run_seed", trained)
    cfg = dataclasses.replace(smoke(), treebank="", data=dataclasses.replace(smoke().data, deep_grammar="grammar_a"))
    with pytest.raises(ValueError, match=r"deep grammar 'grammar_a' .* no scored token at clause depth >= 2"):
        roles.run(cfg, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_aggregation_leaves_out_seeds_without_deep_tokens():
    def seed(structural):
        r = {"accuracy": 0.5, "per_role": {}, "per_depth": {}, "per_construction": {}}
        return {"results": {"deep": {m: {**r, **({"structural": {"accuracy": structural}} if structural else {})}
                                     for m in MODELS}}}

    assert deep_margins([seed(None)]) == {}
    assert "structural" not in aggregate([seed(None)])["deep"]["bigru"]
    agg = aggregate([seed(None), seed(0.75)])["deep"]["bigru"]["structural"]
    assert agg["mean"] == 0.75 and agg["n"] == 1
    assert deep_margins([seed(None), seed(0.75)])["two_stage"]["n"] == 1


def test_two_eval_grammars_of_one_file_name_are_refused(tmp_path, capsys):
    # both would be the set "eval:g" (and draw with one seed): one was silently lost
    paths = []
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        paths.append(tmp_path / d / "g.yaml")
        shutil.copy(resolve_grammar_path("grammar_b"), paths[-1])
    rc = main(["roles", "--smoke", "--no-treebank", "--quiet", "--out", str(tmp_path / "x"),
               "--eval-grammar", str(paths[0]), "--eval-grammar", str(paths[1])])
    assert rc == 2
    assert f"{paths[0]} and {paths[1]} would both be the set 'eval:g'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@needs_committed
def test_the_committed_config_passes_validation_and_equals_the_default():
    saved = json.loads((COMMITTED / "roles.json").read_text())["config"]
    assert json.loads(json.dumps(config_to_dict(roles.Config()))) == saved


def test_verdicts_rest_on_the_t_interval_and_notes_state_it():
    # mean +- 2 standard errors covers 88% at 5 seeds: 0.95 +- 0.01 read as below 0.96; the t-interval includes it
    ms = {"mean": 0.95, "std": 0.01, "n": 5}
    assert roles._verdict(ms, 0.96) == "inconclusive"
    assert roles._verdict({**ms, "std": 0.005}, 0.96) == "refuted"
    assert roles._rule(ms, 0.96) == ("95% t-interval [0.938, 0.962] over 5 seeds; verdict rule: confirmed when it "
                                     "lies above 0.960, refuted when below, else inconclusive")
