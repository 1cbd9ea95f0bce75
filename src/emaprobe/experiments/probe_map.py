"""The boundary map: structure tasks and content tasks side by side, per context mechanism.

One figure, rows = mechanisms, columns = tasks, each cell a score in [0, 1]:

| column             | source JSON                              | score                                   |
|--------------------|------------------------------------------|-----------------------------------------|
| roles within-A     | results/roles/roles.json                 | accuracy of the EMA-trace learners (Hebbian) and the BiGRU |
| roles deep (>=2)   | results/roles/roles.json                 | the same on deep-embedded clauses       |
| lag k=4, k=64      | results/probes/probe_lag/lag.json        | bits of x_(t-k) / H(x)                  |
| MQAR               | results/probes/probe_mqar{,_long*,_cpu_long,_gpu,_gpu_long}/mqar.json | accuracy at the claim cell, best lr, mean over seeds |

The roles rows are the mechanisms that experiment has (EMA traces feeding a
Hebbian learner, the supervised BiGRU); the content rows are the mixers. A cell
that was not measured is grey, never a guess. ``run`` copies the numbers it finds
into OUT/map.json (with the path and a missing-reason for each source), so the
report reads only JSON under OUT, as the protocol asks; a missing or differently
shaped source JSON leaves its column empty and says why.

Command:   emaprobe run probe_map --out results/probes/probe_map     (after the other probes)
           emaprobe run probe_map --smoke                             (CI: reads whatever exists)
Inputs:    the source paths above are relative to the current folder: run from the repository root,
           or give them with --set roles=PATH, lag=PATH, mqar=[...]. Finding none is an error, except
           in the smoke.
Writes:    OUT/map.json, OUT/boundary_map.png, OUT/README.md, OUT/claims.json (no claim of its own: [])
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emaprobe.experiments.common import pyplot, save_fig
from emaprobe.experiments.protocol import write_claims
from emaprobe.probes.recall import best_lr_run
from emaprobe.utils import atomic_write_json, atomic_write_text, read_json, run_record

NAME = "probe_map"
RESULT = "map.json"
ROWS = ("ema", "learned_ema", "selective", "gla", "attention", "hebbian spec (EMA traces)",
        "hebbian two-stage (EMA traces)", "bigru (supervised)")
# the roles experiment's learner names (results/roles/roles.json) -> rows here
ROLE_MODELS = {"hebbian": "hebbian spec (EMA traces)", "two_stage": "hebbian two-stage (EMA traces)",
               "bigru": "bigru (supervised)"}


@dataclass(frozen=True)
class Config:
    roles: str = "results/roles/roles.json"
    lag: str = "results/probes/probe_lag/lag.json"
    mqar: tuple[str, ...] = ("results/probes/probe_mqar/mqar.json", "results/probes/probe_mqar_long/mqar.json",
                             "results/probes/probe_mqar_long_attention/mqar.json",
                             "results/probes/probe_mqar_long_selective/mqar.json",
                             "results/probes/probe_mqar_cpu_long/mqar.json",
                             "results/probes/probe_mqar_gpu/mqar.json", "results/probes/probe_mqar_gpu_long/mqar.json")
    lag_ks: tuple[int, ...] = (4, 64)
    budget: str = "default"


def smoke() -> Config:
    return Config(budget="smoke")


def _load(path: str) -> tuple[dict | None, str]:
    p = Path(path)
    if not p.is_file():
        return None, f"{p} not found"
    try:
        return json.loads(p.read_text()), ""
    except (OSError, json.JSONDecodeError) as err:
        return None, f"{p}: unreadable ({err})"


def _mean(v) -> float | None:
    if isinstance(v, dict):
        v = v.get("mean")
    return float(v) if isinstance(v, (int, float)) else None


def roles_columns(res: dict) -> tuple[dict, str]:
    """{column: {row: score}} from a roles.json; tolerant of the schema (aggregate/set/model/accuracy)."""
    agg = res.get("aggregate")
    if not isinstance(agg, dict):
        return {}, "roles JSON has no 'aggregate' table"
    cols = {}
    for set_name, col in (("within_a", "roles within-A"), ("deep", "roles deep")):
        table = agg.get(set_name)
        if not isinstance(table, dict):
            continue
        for model, row in ROLE_MODELS.items():
            acc = _mean((table.get(model) or {}).get("accuracy"))
            if acc is not None:
                cols.setdefault(col, {})[row] = acc
    return cols, "" if cols else "roles JSON aggregate holds none of " + ", ".join(ROLE_MODELS)


def lag_columns(res: dict, ks) -> tuple[dict, str]:
    cfg = res.get("config", {})
    h = res.get("h_bits")
    cols = {}
    for k in ks:
        if k not in cfg.get("lags", []):
            continue
        i = cfg["lags"].index(k)
        for m in cfg.get("mixers", []):
            vals = [s[m]["curve"][i]["bits"] for s in res.get("per_seed", []) if m in s]
            if vals and h:
                cols.setdefault(f"lag k={k} (bits / H)", {})[m] = float(np.mean(vals)) / h
        if "analytic" in res and h:
            cols.setdefault(f"lag k={k} (bits / H)", {})["ema analytic"] = res["analytic"]["bits"][i] / h
    return cols, "" if cols else "lag JSON holds none of the lags asked for"


def mqar_columns(res: dict) -> tuple[dict, str]:
    """Accuracy at the claim cell per mixer: the best lr of seed 0 (``probes.recall.best_lr_run``, as
    probe_mqar chooses it), then the mean over that lr's seeds."""
    cfg, rows = res.get("config", {}), res.get("rows", [])
    cell = tuple(cfg.get("claim_cell", ()))
    at = [r for r in rows if (r["seq_len"], r["pairs"], r["width"]) == cell]
    col = {}
    for m in sorted({r["mixer"] for r in at}):
        seed0 = [r for r in at if r["mixer"] == m and r["seed"] == 0]
        if not seed0:
            continue
        lr = best_lr_run(seed0)["lr"]
        col[m] = float(np.mean([r["accuracy"] for r in at if r["mixer"] == m and r["lr"] == lr]))
    name = f"MQAR V={cfg.get('vocab')} T={cell[0]} N={cell[1]}, {cfg.get('steps')} steps (acc)" if cell else "MQAR"
    return ({name: col} if col else {}), "" if col else "MQAR JSON has no rows at its claim cell"


def run(cfg: Config, out: Path) -> None:
    sources, columns = {}, {}
    for key, path, fn in (("roles", cfg.roles, roles_columns), ("lag", cfg.lag, lambda r: lag_columns(r, cfg.lag_ks)),
                          *((f"mqar{i or ''}", p, mqar_columns) for i, p in enumerate(cfg.mqar))):
        res, why = _load(path)
        cols = {}
        if res is not None:
            cols, why = fn(res)
        sources[key] = {"path": path, "found": bool(cols), "missing": why,
                        "git_sha": (res or {}).get("git_sha") or ((res or {}).get("run") or {}).get("git_sha")}
        for name, col in cols.items():  # two sources of one column (same task and budget) merge
            columns.setdefault(name, {}).update(col)
    if not columns and cfg.budget != "smoke":  # the smoke reads whatever exists, nothing included (CI)
        missing = "; ".join(s["missing"] for s in sources.values())
        raise FileNotFoundError(
            f"{NAME} found none of its inputs ({missing}); relative paths are read from the current folder "
            f"({Path.cwd()}): run it from the repository root, or point at the JSON with --set roles=PATH "
            "--set lag=PATH --set 'mqar=[\"PATH\"]'")
    atomic_write_json(Path(out) / RESULT, run_record(experiment=NAME, config=dataclasses.asdict(cfg), sources=sources,
                                                     columns=columns))


def report(out: Path) -> None:
    out = Path(out)
    res = read_json(out / RESULT)
    columns = res["columns"]
    names = list(columns)
    rows = [r for r in (*ROWS, "ema analytic") if any(r in c for c in columns.values())]
    write_claims(out, [])
    lines = [f"# {NAME}: where fixed-coefficient context holds and where it breaks", "",
             f"Made by `emaprobe.experiments.{NAME}` from `{RESULT}`, which copies the numbers from:", ""]
    for key, s in res["sources"].items():
        lines.append(f"- {key}: `{s['path']}`" + ("" if s["found"] else f" (missing: {s['missing']})"))
    if not names:
        lines += ["", "No source JSON was found: nothing to draw."]
        atomic_write_text(out / "README.md", "\n".join(lines) + "\n")
        return
    grid = np.full((len(rows), len(names)), np.nan)
    for j, c in enumerate(names):
        for i, r in enumerate(rows):
            if r in columns[c]:
                grid[i, j] = columns[c][r]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.5 * len(names) + 3.0, 0.45 * len(rows) + 1.8))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap=cmap, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(names)):
            v = grid[i, j]
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if np.isnan(v) or v > 0.6 else "white")
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.axvline([k for k, n in enumerate(names) if not n.startswith("roles")][0] - 0.5
               if any(n.startswith("roles") for n in names) and not all(n.startswith("roles") for n in names) else -0.5,
               color="white", lw=3)
    ax.set_title("structure (roles) | content (lag identity, MQAR): score in [0, 1]", fontsize=9)
    save_fig(fig, out / "boundary_map.png")
    lines += ["", "![boundary map](boundary_map.png)", "", "| mechanism | " + " | ".join(names) + " |",
              "|---|" + "---:|" * len(names)]
    for i, r in enumerate(rows):
        lines.append(f"| {r} | " + " | ".join("n/a" if np.isnan(v) else f"{v:.3f}" for v in grid[i]) + " |")
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")


__all__ = ["Config", "NAME", "report", "run", "smoke"]
