"""Pick the two-stage role learner's backward-trace weight on A-validation alone.

The two-stage learner (``roles``) reads EMA traces in both directions. Far right context
crosses clause boundaries, which nest differently in deeper sentences, so a weight below 1
on the backward trace features (``HebbianConfig.backward_weight``) may generalise better.
This experiment chooses that weight without reading any test, transfer or deep sentence:

    for each seed and each weight in ``weights``: fit the two-stage learner on A-train (no
    labels); split A-val's sentences in two by a seeded permutation; name the clusters on one
    half, score the other, swap, and average (the split-half score). A cluster named and
    scored on the same tokens would flatter a large K, so the in-sample score is reported
    beside it but not used.

The pick is the weight with the best mean split-half score (a tie goes to the weight
nearest 1). ``roles``'s ``two_stage`` config takes the pick; the report says whether they
agree.

Then the vote's size (``HebbianConfig.members``, ``models.hebbian.HebbianVote``): at the
two-stage config's own weight, the first E of ``members_grid``'s largest vote, named on one
half and scored on the other in the same way. The pick is the best mean split-half score (a
tie goes to the smaller vote).

Command:   emaprobe run roles_tune                 (5 seeds x (4 weights + a vote of 5), CPU, about a minute)
           emaprobe run roles_tune --smoke         (seconds; CI)
Writes:    OUT/tune.json (run record with every seed's scores), OUT/README.md, OUT/claims.json
           (no claim: a selection, not a finding).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emaprobe.experiments import roles
from emaprobe.experiments.protocol import write_claims
from emaprobe.models.hebbian import (FixedEmbeddings, HebbianConfig, HebbianRoleLearner, HebbianVote, role_targets,
                                     vote)
from emaprobe.tasks.role_data import RoleDataConfig
from emaprobe.utils import atomic_write_json, atomic_write_text, read_json, run_record

NAME = "roles_tune"
RESULT = "tune.json"
EXECUTION_FIELDS = ("workers",)  # spreads the seeds over processes; the scores do not depend on it


@dataclass(frozen=True)
class Config:
    """``--set FIELD=VALUE`` overrides any field (dotted for nested)."""

    data: RoleDataConfig = roles.Config().data
    two_stage: HebbianConfig = roles.Config().two_stage
    bigru_dim: int = roles.Config().bigru.dim  # the shared embeddings' width
    weights: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1)
    members_grid: tuple[int, ...] = (1, 3, 5)  # votes of this many learners, at two_stage's own weight
    seeds: int = 5
    workers: int = 2  # seeds in this many processes at once (the scores do not depend on it)

    def __post_init__(self) -> None:
        if self.seeds < 1 or self.workers < 1:
            raise ValueError(f"seeds and workers must be >= 1, got {self.seeds}, {self.workers}")
        if not self.weights or any(not w >= 0 for w in self.weights):
            raise ValueError(f"weights must be non-negative backward weights, got {self.weights}")
        if not self.members_grid or any(m < 1 for m in self.members_grid):
            raise ValueError(f"members_grid must hold vote sizes >= 1, got {self.members_grid}")
        if self.data.n_val < 2:  # A-val is split in two halves, each naming the clusters the other scores
            raise ValueError(f"data.n_val must be >= 2 (split in halves), got {self.data.n_val}")


def smoke() -> Config:
    small = roles.smoke()
    return Config(data=small.data, two_stage=small.two_stage, weights=(1.0, 0.5), members_grid=(1, 2), seeds=1,
                  workers=1)


def _named_predictions(model: HebbianRoleLearner, named_on: list, scored_on: list) -> list[str]:
    """Roles on ``scored_on`` from ``model``'s clusters named on ``named_on`` (the model is not changed)."""
    return model.named_copy(named_on).predict(scored_on)


def _named_accuracy(model: HebbianRoleLearner, named_on: list, scored_on: list) -> float:
    """Accuracy on ``scored_on`` of ``model``'s clusters named on ``named_on`` (the model is not changed)."""
    pred, gold = _named_predictions(model, named_on, scored_on), role_targets(scored_on)
    return float(np.mean([p == g for p, g in zip(pred, gold)]))


def score_seed(cfg: Config, seed: int) -> dict[str, Any]:
    """Split-half and in-sample A-val accuracy of the two-stage learner at every weight, one seed."""
    import torch

    torch.set_num_threads(1)
    data = dataclasses.replace(cfg.data, seed=seed).build()
    train, val = data.train, list(data.val)
    perm = np.random.default_rng(1000 + seed).permutation(len(val))
    half_a, half_b = [val[i] for i in perm[: len(val) // 2]], [val[i] for i in perm[len(val) // 2:]]
    emb = FixedEmbeddings.from_sentences(train, cfg.bigru_dim, seed)  # as roles builds them
    out = {}
    for w in cfg.weights:
        model = HebbianRoleLearner(dataclasses.replace(cfg.two_stage, seed=seed, backward_weight=w), emb).fit(train)
        conf = model.confusion(val)
        out[repr(float(w))] = {
            "split_half": 0.5 * (_named_accuracy(model, half_a, half_b) + _named_accuracy(model, half_b, half_a)),
            "in_sample": float(conf.max(1).sum() / conf.sum()),
        }
    # the vote: its members fitted once; a vote of E is its first E members
    big = HebbianVote(dataclasses.replace(cfg.two_stage, seed=seed, members=max(cfg.members_grid)), emb).fit(train)
    votes = {}
    for named_on, scored_on in ((half_a, half_b), (half_b, half_a)):
        preds = [_named_predictions(m, named_on, scored_on) for m in big.members]
        gold = role_targets(scored_on)
        for e in cfg.members_grid:
            acc = float(np.mean([p == g for p, g in zip(vote(preds[:e]), gold)]))
            votes[str(e)] = votes.get(str(e), 0.0) + 0.5 * acc
    return {"seed": seed, "scores": out, "members": votes}


def pick_members(per_seed: list[dict], grid: tuple[int, ...]) -> int:
    """The vote size with the best mean split-half score; a tie goes to the smaller vote."""
    means = {e: np.mean([s["members"][str(e)] for s in per_seed]) for e in grid}
    best = max(means.values())
    return min(e for e, m in means.items() if m == best)


def pick(per_seed: list[dict], weights: tuple[float, ...]) -> float:
    """The weight with the best mean split-half score; a tie goes to the weight nearest 1."""
    means = {w: np.mean([s["scores"][repr(float(w))]["split_half"] for s in per_seed]) for w in weights}
    best = max(means.values())
    return min((w for w, m in means.items() if m == best), key=lambda w: abs(w - 1.0))


def run(cfg: Config, out: Path) -> None:
    out = Path(out)
    t0 = time.perf_counter()
    seeds = list(range(cfg.seeds))
    if cfg.workers == 1:
        per_seed = [score_seed(cfg, s) for s in seeds]
    else:
        with cf.ProcessPoolExecutor(max_workers=min(cfg.workers, len(seeds)), mp_context=mp.get_context("spawn")) as ex:
            per_seed = list(ex.map(score_seed, [cfg] * len(seeds), seeds))
    chosen = pick(per_seed, cfg.weights)
    record = run_record(experiment=NAME, config=dataclasses.asdict(cfg), seeds=per_seed, pick=chosen,
                        roles_uses=roles.Config().two_stage.backward_weight,
                        members_pick=pick_members(per_seed, cfg.members_grid),
                        roles_uses_members=roles.Config().two_stage.members, wall_s=round(time.perf_counter() - t0, 1))
    atomic_write_json(out / RESULT, record)


def report(out: Path) -> None:
    out = Path(out)
    res = read_json(out / RESULT)
    weights = res["config"]["weights"]
    lines = [
        f"# {NAME}: the two-stage learner's backward-trace weight and vote size, picked on A-val alone",
        "",
        f"Made by `emaprobe run {NAME}` (`emaprobe.experiments.{NAME}` has the rule); drawn from `{RESULT}`. "
        f"{len(res['seeds'])} seed(s), A-val accuracy of role-bearing tokens in %, mean ± std; no test, transfer or "
        f"deep sentence is read. Wall time {res['wall_s'] / 60:.1f} min on {res.get('device', 'cpu')}.",
        "",
        "| backward weight | split-half (the rule) | in-sample naming | per seed, split-half |",
        "|---:|---|---|---|",
    ]
    def sd(v: list[float]) -> float:
        return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0

    for w in weights:
        sh = [100 * s["scores"][repr(float(w))]["split_half"] for s in res["seeds"]]
        ins = [100 * s["scores"][repr(float(w))]["in_sample"] for s in res["seeds"]]
        mark = "**" if w == res["pick"] else ""
        lines.append(f"| {mark}{w:g}{mark} | {np.mean(sh):.1f} ± {sd(sh):.1f} | {np.mean(ins):.1f} ± {sd(ins):.1f} | "
                     + ", ".join(f"{v:.1f}" for v in sh) + " |")
    agree = "the same" if res["pick"] == res["roles_uses"] else f"NOT the same: roles uses {res['roles_uses']:g}"
    lines += ["", f"Pick: **{res['pick']:g}**; `emaprobe run roles` uses {res['roles_uses']:g} ({agree}).", ""]
    if "members_pick" in res:
        w = res["config"]["two_stage"]["backward_weight"]
        lines += ["## The vote's size", "",
                  f"Votes of the first E learners (seeds s, s + 100, ...; `HebbianVote`) at backward weight {w:g}, "
                  "split-half A-val accuracy in %:", "", "| learners voting | split-half (the rule) | per seed |",
                  "|---:|---|---|"]
        for e in res["config"]["members_grid"]:
            sh = [100 * s["members"][str(e)] for s in res["seeds"]]
            mark = "**" if e == res["members_pick"] else ""
            lines.append(f"| {mark}{e}{mark} | {np.mean(sh):.1f} ± {sd(sh):.1f} | " + ", ".join(f"{v:.1f}" for v in sh)
                         + " |")
        same = res["members_pick"] == res["roles_uses_members"]
        lines += ["", f"Pick: **{res['members_pick']}**; `emaprobe run roles` uses {res['roles_uses_members']} "
                  f"({'the same' if same else 'NOT the same'}).", ""]
    atomic_write_text(out / "README.md", "\n".join(lines))
    write_claims(out, [])
