"""``emaprobe roles``: the smoke run writes the results users and the report read; bad input fails cleanly."""

from __future__ import annotations

import json

import pytest

from emaprobe.cli import main
from emaprobe.experiments.roles import MODELS, aggregate, score, smoke_config
from emaprobe.tasks.grammar import resolve_grammar_path
from emaprobe.tasks.sentence import RoleSentence


def _check_result(result: dict, sets: set[str]) -> None:
    assert set(result["aggregate"]) == sets
    for name in sets:
        for model in MODELS:
            entry = result["aggregate"][name][model]
            assert 0.0 <= entry["accuracy"]["mean"] <= 1.0
            assert {"per_role", "per_depth", "per_construction"} <= set(entry)
    assert set(result["ratio_within_a"]) == {"hebbian", "hebbian_causal", "hebbian_m2o", "hebbian_m2o_causal"}
    assert {"git_sha", "argv", "time_utc"} <= set(result["run"])
    assert result["config"]["hebbian"]["mapping"] == "hungarian"
    assert result["seeds"] == [0]


def test_smoke_cli_writes_json_table_and_plot(tmp_path, capsys):
    out = tmp_path / "roles"
    grammar_b = resolve_grammar_path("grammar_b")
    rc = main(["roles", "--smoke", "--no-treebank", "--quiet", "--out", str(out), "--eval-grammar", str(grammar_b)])
    assert rc == 0
    result = json.loads((out / "roles.json").read_text())
    _check_result(result, {"within_a", "transfer_b", "deep", "eval:grammar_b"})
    assert "structural" in result["aggregate"]["deep"]["bigru"]
    table = (out / "README.md").read_text()
    assert "paper" in table and "61.8" in table and "within-A" in table
    assert (out / "roles.png").stat().st_size > 1000
    assert "ratio hebbian/bigru" in capsys.readouterr().out


def test_smoke_on_the_treebank(tmp_path, shared_data):
    out = tmp_path / "roles"
    rc = main(["roles", "--smoke", "--quiet", "--out", str(out), "--treebank", str(shared_data / "ud-english-ewt")])
    assert rc == 0
    result = json.loads((out / "roles.json").read_text())
    _check_result(result, {"within_a", "transfer_b", "deep", "ud_test"})
    assert set(result["aggregate"]["ud_test"]["majority"]["per_role"]) <= {"AGENT", "PATIENT", "RECIPIENT"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "0"], "--seeds"),
        (["--eval-grammar", "/nonexistent/g.yaml"], "no such file"),
        (["--treebank", "/nonexistent/ud"], "not a folder"),
        (["--set", "hebbian.n_unitz=4"], "n_unitz"),
        (["--set", "hebbian.directions=sideways"], "sideways"),
        (["--set", "nonsense"], "FIELD=VALUE"),
    ],
)
def test_bad_arguments_give_one_line_errors(tmp_path, capsys, args, message):
    rc = main(["roles", "--smoke", "--no-treebank", "--quiet", "--out", str(tmp_path / "x"), *args])
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
    cfg = smoke_config()
    assert cfg.seeds == 1 and cfg.data.n_train <= 500


def test_report_rebuilds_the_table_from_json_alone(tmp_path):
    out = tmp_path / "roles"
    assert main(["roles", "--smoke", "--no-treebank", "--quiet", "--out", str(out)]) == 0
    (out / "README.md").unlink()
    from emaprobe.experiments.roles import report

    report(out)
    text = (out / "README.md").read_text()
    assert "## Targets" in text and ("met" in text or "missed" in text)
    with pytest.raises(FileNotFoundError, match="roles.json"):
        report(tmp_path / "nothing")
