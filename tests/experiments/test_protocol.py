"""The experiment protocol: claim rows that cannot lie about their form, verdict rules, the registry."""

import json
import math

import pytest

from emaprobe.cli.run import parse_set
from emaprobe.experiments import protocol
from emaprobe.experiments.protocol import (
    Claim,
    no_difference_note,
    read_claims,
    verdict_from_interval,
    verdict_no_difference,
    write_claims,
)

ROW = dict(claim="c", metric="m", paper=0.96, ours=0.9, std=0.01, seeds=5, scale="s", verdict="refuted", command="x")


@pytest.mark.parametrize("field, value, words", [
    ("verdict", "maybe", "verdict must be one of"),
    ("ours", math.nan, "ours must be a finite number"),
    ("paper", "high", "paper must be a finite number"),
    ("seeds", 0, "seeds must be an integer >= 1"),
    ("command", "", "command must not be empty"),
    ("seeds", 1, "std must be None for one seed"),
])
def test_a_malformed_claim_is_a_named_error(field, value, words):
    with pytest.raises(ValueError, match=words):
        Claim(**{**ROW, field: value})


def test_claims_round_trip_and_duplicate_ids_are_refused(tmp_path):
    rows = [Claim(**ROW), Claim(**{**ROW, "claim": "d", "paper": None, "std": None})]
    write_claims(tmp_path, rows)
    assert read_claims(tmp_path) == rows
    with pytest.raises(ValueError, match=r"duplicate claim ids \['c'\]"):
        write_claims(tmp_path, [Claim(**ROW), Claim(**ROW)])
    (tmp_path / "claims.json").write_text(json.dumps([{**ROW, "colour": "red"}]))
    with pytest.raises(ValueError, match="row 0 has unknown fields"):
        read_claims(tmp_path)


@pytest.mark.parametrize("lo, hi, above, verdict", [
    (0.6, 0.9, True, "confirmed"), (0.1, 0.4, True, "refuted"), (0.4, 0.6, True, "inconclusive"),
    (0.1, 0.4, False, "confirmed"), (0.6, 0.9, False, "refuted"),
])
def test_verdict_from_interval(lo, hi, above, verdict):
    assert verdict_from_interval(lo, hi, threshold=0.5, above_confirms=above) == verdict


@pytest.mark.parametrize("mean, lo, hi, verdict", [
    (0.004, -0.015, 0.019, "confirmed"),  # within +-0.02
    (0.010, 0.005, 0.015, "confirmed"),  # excludes 0, but by less than the tolerance
    (0.037, 0.030, 0.044, "refuted"),  # excludes 0 by more
    (-0.050, -0.060, -0.040, "refuted"),
    (0.004, -0.030, 0.038, "inconclusive"),  # too wide to say
])
def test_verdict_no_difference(mean, lo, hi, verdict):
    assert verdict_no_difference(mean, lo, hi, tol=0.02) == verdict


@pytest.mark.parametrize("verdict, lo, hi, caveat", [
    ("confirmed", -0.015, 0.019, None),  # within the tolerance: the rule alone
    ("confirmed", -0.0227, -0.0091, "reaches -0.0227, past +-0.02"),  # by the mean alone, the low end past it
    ("confirmed", 0.005, 0.031, "reaches +0.0310, past +-0.02"),  # the high end past it
    ("inconclusive", -0.0227, -0.0091, None),  # a verdict the caller kept (one seed): no caveat
    ("inconclusive", -0.0122, 0.0302, None),  # spans 0 and passes +0.02: the mean (+0.009) is not enough
    ("refuted", 0.030, 0.044, None),
])
def test_no_difference_note_names_a_verdict_resting_on_the_mean_alone(verdict, lo, hi, caveat):
    note = no_difference_note(verdict, lo, hi, tol=0.02)
    assert note.startswith("Verdict rule: confirmed when the interval lies within +-0.02 nats")
    # a small mean alone does not confirm: the rule's words say the interval must exclude 0 too (lm_ptb's
    # +0.009 over [-0.012, +0.030] is inconclusive)
    assert "or excludes 0 with a mean under 0.02" in note and "the difference is under" not in note
    if caveat is None:
        assert "mean alone" not in note
    else:
        assert note.endswith(f"Confirmed here by the mean alone: the interval {caveat}.")


def test_verdicts_refuse_an_inverted_interval():
    with pytest.raises(ValueError, match="interval low 0.2 > high 0.1"):
        verdict_no_difference(0.15, 0.2, 0.1, tol=0.02)


def test_unknown_experiment_and_budget_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown experiment 'nope'; choose one of \[.*'lm_scale'"):
        protocol.get_experiment("nope")
    exp = protocol.get_experiment("lm_ptb")
    with pytest.raises(ValueError, match=r"has no budget 'huge'; choose one of \['default', 'gpu', 'smoke'\]"):
        protocol.config_for(exp, "huge")
    assert protocol.config_for(exp, "smoke", {"seeds": "3"}).seeds == (3,)
    assert protocol.config_for(exp, "smoke", {"seeds": "0,2"}).seeds == (0, 2)


def test_set_items_parse_or_fail_clearly():
    assert parse_set(["a.b=1", "c = x "]) == {"a.b": "1", "c": "x"}
    with pytest.raises(ValueError, match="--set takes FIELD=VALUE"):
        parse_set(["a.b"])


def test_a_report_of_foreign_json_is_a_named_error(tmp_path):
    # valid JSON, but not what probe_lag wrote: the report's missing field becomes a ValueError naming the folder
    (tmp_path / protocol.get_experiment("probe_lag").RESULT).write_text('{"per_seed": []}')
    with pytest.raises(ValueError, match=r"the probe_lag JSON there lacks what the report reads \(KeyError: 'config'\)"):
        protocol.run_experiment("probe_lag", out=tmp_path, report_only=True)
