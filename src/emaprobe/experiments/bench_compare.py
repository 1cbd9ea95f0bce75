"""``emaprobe bench compare``: two sets of runs of one benchmark on one card, row by row.

A kernel or model change is judged by an A/B: the benchmark run on the tree before (``base``) and
after (``new``), alternated, in one sitting on one card. This joins those JSONs: each row is matched
across files by its key fields (by default every non-float field: shapes, dtypes, model names,
flags), each float field averaged over a side's runs, and the ratio new / base reported per row and
summed up per field as a geometric mean with its extremes. Nothing is measured; times of different
cards are refused, since only a baseline run on the same card is comparable.
"""

from __future__ import annotations

import math
from pathlib import Path

from emaprobe.experiments.common import card_slug, check_tag, pyplot, save_fig, write_result
from emaprobe.utils.io import atomic_write_json, read_json, run_record


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        res = read_json(path)
    except ValueError as err:  # read_json names the file first
        raise ValueError(f"{path}: not a benchmark JSON ({str(err).removeprefix(f'{path}: ')})") from err
    if not isinstance(res, dict) or not isinstance(res.get("rows"), list) or "benchmark" not in res:
        raise ValueError(f"{path}: not a benchmark JSON (an emaprobe bench result has 'benchmark' and 'rows')")
    return res


def _is_number(v) -> bool:
    return isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool))


def key_fields(row: dict) -> tuple[str, ...]:
    """A row's default key: its fields holding a string, a bool or an int (shapes, names, flags)."""
    return tuple(k for k, v in row.items() if isinstance(v, (str, bool, int)))


def _key(row: dict, fields: tuple[str, ...] | None) -> tuple:
    names = key_fields(row) if fields is None else fields
    return tuple((k, row.get(k)) for k in names)


def load_side(paths: list[str | Path], fields: tuple[str, ...] | None, what: str) -> dict:
    """One side's runs: benchmark, card, the git SHAs, and each row key's float fields, one list of
    values a run. Every run of a side must be of one benchmark and card and hold the same row keys."""
    if not paths:
        raise ValueError(f"--{what} names no JSON file")
    side: dict = {"files": [], "shas": [], "rows": {}}
    keys0 = None
    for p in map(Path, paths):
        res = _read(p)
        for field in ("benchmark", "card"):
            got = res.get(field) or (res.get("device") if field == "card" else None)
            if field not in side:
                side[field] = got
            elif got != side[field]:
                raise ValueError(f"{p}: {field} {got!r}, but {side['files'][0]} has {side[field]!r}; "
                                 f"compare runs of one benchmark on one card")
        rows = {}
        for r in res["rows"]:
            k = _key(r, fields)
            if k in rows:
                raise ValueError(f"{p}: two rows share the key {dict(k)}; name the fields that tell them apart "
                                 "with --key")
            rows[k] = r
        if keys0 is None:
            keys0 = set(rows)
        elif set(rows) != keys0:
            raise ValueError(f"{p}: its rows differ from {side['files'][0]}'s (the {what} runs must be repeats "
                             "of one command)")
        side["files"].append(str(p))
        side["shas"].append(res.get("git_sha"))
        for k, r in rows.items():
            vals = side["rows"].setdefault(k, {})
            named = dict(k)
            for name, v in r.items():
                if name not in named and _is_number(v):
                    vals.setdefault(name, []).append(float(v))
    return side


def _named(k: tuple) -> str:
    return " ".join(f"{n}={v}" for n, v in k if v is not None)


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.5g}"


def _label(keys: list[tuple]) -> dict[tuple, str]:
    # each row's name: few of the key fields that vary among the rows, enough to tell the rows apart
    # ("B=8 T=2048 D=1024"; a row without a field skips it); one row, or rows alike: its whole key, cut
    names = list(dict.fromkeys(n for k in keys for n, _ in k))
    varying = [n for n in names if len({dict(k).get(n) for k in keys}) > 1]
    if not varying:
        return {k: _named(k)[:72] for k in keys}

    def distinct(fields):
        return len({tuple(dict(k).get(u) for u in fields) for k in keys})

    used: list[str] = []
    while distinct(used) < len(keys):  # the field that tells the most rows apart next (the first of equals)
        best = max((n for n in varying if n not in used), key=lambda n: distinct(used + [n]))
        if distinct(used + [best]) == distinct(used):
            break
        used.append(best)
    used.sort(key=names.index)  # in the rows' own order
    return {k: " ".join(f"{n}={dict(k)[n]}" for n in used if dict(k).get(n) is not None) for k in keys}


def compare(base: list[str | Path], new: list[str | Path], metrics: tuple[str, ...] = (),
            key: tuple[str, ...] | None = None) -> dict:
    """The comparison (see the module docstring): ``summary`` per float field (rows, geometric mean of
    new / base, least and greatest ratio and their rows), ``rows`` with each side's means and the
    ratios of ``metrics`` (every field both sides have, if none are named)."""
    metrics = tuple(dict.fromkeys(metrics))  # a field named twice is listed once
    b, n = load_side(base, key, "base"), load_side(new, key, "new")
    for field in ("benchmark", "card"):
        if b[field] != n[field]:
            raise ValueError(f"the base runs' {field} is {b[field]!r} and the new runs' {n[field]!r}; "
                             "compare runs of one benchmark on one card")
    keys = [k for k in b["rows"] if k in n["rows"]]
    if not keys:
        raise ValueError("no row of the base runs matches a row of the new runs by its key fields "
                         f"({[f for f, _ in next(iter(b['rows']))]}); name the fields to match on with --key")
    common = [f for f in dict.fromkeys(f for k in keys for f in b["rows"][k])
              if any(f in b["rows"][k] and f in n["rows"][k] for k in keys)]
    unknown = [m for m in metrics if m not in common]
    if unknown:
        raise ValueError(f"--metric {unknown}: not a number in any row both sides have; "
                         f"these are: {', '.join(common)}")
    chosen = list(metrics) or common
    labels = _label(keys)
    rows, summary = [], {}
    for k in keys:
        row = {"row": labels[k], "key": dict(k)}
        for f in chosen:
            bv, nv = b["rows"][k].get(f), n["rows"][k].get(f)
            if bv is None or nv is None:  # a field some rows lack (another part of the benchmark)
                row[f] = None
                continue
            bm, nm = sum(bv) / len(bv), sum(nv) / len(nv)
            row[f] = {"base": bm, "new": nm, "ratio": nm / bm if bm else None}
        rows.append(row)
    for f in chosen:
        pairs = [(r[f]["ratio"], r["row"]) for r in rows if r[f] and r[f]["ratio"] is not None and r[f]["ratio"] > 0]
        if not pairs:
            continue
        lo, hi = min(pairs), max(pairs)
        summary[f] = {"rows": len(pairs), "geomean_ratio": math.exp(sum(math.log(p) for p, _ in pairs) / len(pairs)),
                      "min_ratio": lo[0], "min_row": lo[1], "max_ratio": hi[0], "max_row": hi[1]}
    only = {"base": [_named(k) for k in b["rows"] if k not in n["rows"]],
            "new": [_named(k) for k in n["rows"] if k not in b["rows"]]}
    return {"benchmark": b["benchmark"], "card": b["card"],
            "base": {"files": b["files"], "git_shas": b["shas"]}, "new": {"files": n["files"], "git_shas": n["shas"]},
            "metrics": chosen, "summary": summary, "rows": rows, "unmatched": only}


def format_report(res: dict, detail: tuple[str, ...] = ()) -> str:
    """The summary table (one line per field), then a row-by-row table for each field in ``detail``."""
    def shas(side):
        return ", ".join(dict.fromkeys((s or "?")[:8] for s in res[side]["git_shas"]))

    def runs(side):
        n = len(res[side]["files"])
        return f"{n} run" + ("s" if n != 1 else "")

    out = [f"{res['benchmark']} on {res['card']}: new ({runs('new')}, {shas('new')}) / "
           f"base ({runs('base')}, {shas('base')}), each field averaged over a side's runs",
           f"{'field':<40} {'rows':>4} {'geomean':>8} {'least':>8}  {'greatest':>8}"]
    for f, s in res["summary"].items():
        where = f"   (least at {s['min_row']}; greatest at {s['max_row']})" if s["rows"] > 1 else ""
        out.append(f"{f:<40} {s['rows']:>4} {s['geomean_ratio']:>8.4f} {s['min_ratio']:>8.4f}  {s['max_ratio']:>8.4f}"
                   + where)
    for f in detail:
        out += ["", f"{f}: base -> new (new / base)"]
        for r in res["rows"]:
            v = r[f]
            if v is None:
                continue
            ratio = "-" if v["ratio"] is None else f"{v['ratio']:.4f}"
            out.append(f"  {r['row']:<36} {_num(v['base']):>11} -> {_num(v['new']):<11} ({ratio})")
    for side, lost in res["unmatched"].items():
        if lost:
            out.append(f"only in the {side} runs ({len(lost)} rows, not compared): " + "; ".join(lost[:4])
                       + (" ..." if len(lost) > 4 else ""))
    return "\n".join(out)


def plot(res: dict, fields: tuple[str, ...], path: Path) -> None:
    """One panel a field: new / base per row, a bar each from the line at 1 (no change). The panels share
    one scale of at least 0.99-1.01, so that noise of a few tenths of a percent looks like it."""
    plt = pyplot()
    n = len(res["rows"])
    width = 5 + 0.07 * max(len(r["row"]) for r in res["rows"])  # room for the rows' names
    fig, axes = plt.subplots(len(fields), 1, figsize=(width, (0.22 * n + 0.9) * len(fields) + 0.4), sharex=True,
                             squeeze=False, layout="constrained")
    ratios = {f: [(r[f] or {}).get("ratio") or 1.0 for r in res["rows"]] for f in fields}
    spread = max([0.01] + [abs(x - 1.0) * 1.1 for xs in ratios.values() for x in xs])
    for ax, f in zip(axes[:, 0], fields):
        ax.barh(range(n), [x - 1.0 for x in ratios[f]], left=1.0, color="#48a")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_yticks(range(n), [r["row"] for r in res["rows"]], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f, fontsize=9)
        ax.set_xlim(1.0 - spread, 1.0 + spread)
    axes[-1, 0].set_xlabel("new / base (each side's mean over its runs)")
    fig.suptitle(f"{res['benchmark']}, {res['card']}", fontsize=9)
    save_fig(fig, path)


def run(base: list[str], new: list[str], metrics: tuple[str, ...] = (), key: tuple[str, ...] | None = None,
        out_dir: str | Path | None = "runs/bench", tag: str | None = None) -> dict:
    """``compare``, printed, and written as ``compare_<benchmark>_<card>[_<tag>].json`` (and ``.png`` of
    the ``metrics``' ratios, when some are named) into ``out_dir``."""
    check_tag(tag)
    res = compare(base, new, metrics, key)
    metrics = tuple(res["metrics"]) if metrics else ()
    print(format_report(res, metrics))
    if out_dir is not None:
        stem = Path(out_dir) / (f"compare_{card_slug(res['benchmark'])}_{card_slug(str(res['card']))}"
                                + (f"_{tag}" if tag else ""))
        record = run_record(device="cpu", **res)
        if metrics:
            write_result(stem, record, lambda path: plot(res, metrics, path))
        else:
            print(f"wrote {atomic_write_json(stem.with_suffix('.json'), record)}")
    return res
