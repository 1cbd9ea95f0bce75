"""roles_tune: the pick rule, and the smoke run end to end (A-val only, CPU, seconds)."""

import json

import pytest

from emaprobe.experiments import roles_tune as R
from emaprobe.experiments.protocol import read_claims, run_experiment


def _seed(scores: dict[float, float]) -> dict:
    return {"scores": {repr(float(w)): {"split_half": v, "in_sample": v} for w, v in scores.items()}}


def test_pick_takes_the_best_mean_split_half_and_breaks_ties_toward_one():
    per_seed = [_seed({1.0: 0.80, 0.5: 0.90, 0.1: 0.70}), _seed({1.0: 0.84, 0.5: 0.86, 0.1: 0.95})]
    assert R.pick(per_seed, (1.0, 0.5, 0.1)) == 0.5  # means 0.82, 0.88, 0.825
    tie = [_seed({1.0: 0.9, 0.25: 0.9, 0.5: 0.9})]
    assert R.pick(tie, (0.25, 0.5, 1.0)) == 1.0


def test_pick_members_takes_the_best_mean_and_breaks_ties_toward_the_smaller_vote():
    per_seed = [{"members": {"1": 0.90, "3": 0.92, "5": 0.92}}, {"members": {"1": 0.91, "3": 0.93, "5": 0.93}}]
    assert R.pick_members(per_seed, (1, 3, 5)) == 3
    assert R.pick_members([{"members": {"1": 0.9, "5": 0.95}}], (1, 5)) == 5


def test_bad_configs_are_named_errors():
    with pytest.raises(ValueError, match="weights must be non-negative"):
        R.Config(weights=(1.0, -0.5))
    with pytest.raises(ValueError, match="seeds and workers must be >= 1"):
        R.Config(seeds=0)
    with pytest.raises(ValueError, match="members_grid must hold vote sizes >= 1"):
        R.Config(members_grid=(1, 0))


def test_smoke_run_scores_every_weight_on_a_val_and_names_the_pick(tmp_path):
    out = run_experiment("roles_tune", budget="smoke", out=tmp_path)
    res = json.loads((out / R.RESULT).read_text())
    cfg = R.smoke()
    assert len(res["seeds"]) == cfg.seeds
    for s in res["seeds"]:
        assert set(s["scores"]) == {repr(float(w)) for w in cfg.weights}
        for v in s["scores"].values():
            assert 0.0 <= v["split_half"] <= 1.0 and 0.0 <= v["in_sample"] <= 1.0
    assert res["pick"] in cfg.weights and res["pick"] == R.pick(res["seeds"], cfg.weights)
    for s in res["seeds"]:
        assert set(s["members"]) == {str(e) for e in cfg.members_grid}
        assert all(0.0 <= v <= 1.0 for v in s["members"].values())
    # a vote of one at the config's own weight is that weight's single learner
    w = repr(float(cfg.two_stage.backward_weight))
    assert all(s["members"]["1"] == pytest.approx(s["scores"][w]["split_half"])
               for s in res["seeds"] if w in s["scores"])
    assert res["members_pick"] == R.pick_members(res["seeds"], cfg.members_grid)
    text = (out / "README.md").read_text()
    assert f"Pick: **{res['pick']:g}**" in text and f"Pick: **{res['members_pick']}**" in text
    assert read_claims(out) == []
