"""Every claim of the paper beside ours, in one report: what ``emaprobe reproduce`` builds.

Command:   emaprobe reproduce --from results                 the committed results, no training
           emaprobe reproduce --budget smoke                 every experiment, seconds each, on CPU (CI)
           emaprobe reproduce --budget cpu | gpu             every experiment at that budget
Hardware:  --from: any machine, under a second. --budget smoke: CPU, under 2 minutes in all.
           --budget gpu: one CUDA GPU (experiments without a GPU budget run their default).
Writes:    OUT/report.md, OUT/report.html (self-contained: figures embedded as base64 PNG),
           OUT/report.json; with --budget also OUT/<experiment>/ (what ``emaprobe run`` writes).
           OUT defaults to runs/reproduce.

The report reads only each experiment's ``claims.json`` (``protocol.read_claims``) and the
PNG figures beside it: one table of every claim (the paper's number, ours ± std, seeds,
scale, labels used, verdict, and the command that reruns it), then each experiment's
figures. An experiment that cannot run here is skipped with its reason: a GPU budget
without CUDA, or whatever its optional ``requires(cfg) -> list[str]`` reports missing
(shared data, say). An experiment that fails is listed with its error, and the command
exits non-zero; so is a ``claims.json`` that cannot be read (the reason names the file and row),
and the report is still written. With ``--budget`` and ``--out``, a folder of OUT that holds an
experiment's results of other settings is refused before anything runs, unless ``overwrite``
removes them (the default OUT is scratch, replaced as before).
"""

from __future__ import annotations

import base64
import html
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from emaprobe.experiments import protocol
from emaprobe.experiments.protocol import CLAIMS_NAME, Claim, read_claims
from emaprobe.utils import atomic_write_json, atomic_write_text, run_record

REPORT_BUDGETS = ("smoke", "cpu", "gpu")
DEFAULT_OUT = Path("runs") / "reproduce"
STATUSES = ("ran", "read", "skipped", "missing", "failed")


@dataclass
class Entry:
    """One experiment's part of the report."""

    name: str
    status: str  # one of STATUSES
    reason: str = ""
    folder: str | None = None
    budget: str | None = None
    seconds: float | None = None
    claims: list[Claim] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


@dataclass
class Report:
    source: str  # "results/ (committed)" or "ran at budget smoke"
    entries: list[Entry]
    record: dict

    @property
    def failed(self) -> list[Entry]:
        return [e for e in self.entries if e.status == "failed"]


# ---------------------------------------------------------------------------- collecting


def experiment_budget(exp, budget: str) -> str:
    """The experiment's own budget for a report budget: ``smoke`` is every experiment's; ``cpu`` and
    ``gpu`` are the experiment's budgets of those names where it has them, else its default."""
    if budget not in REPORT_BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {list(REPORT_BUDGETS)}")
    return budget if budget in protocol.budgets(exp) else "default"


def unmet_requirements(exp, budget: str, cfg) -> list[str]:
    """Why experiment ``exp`` cannot run ``cfg`` here (empty when it can)."""
    reasons = []
    if budget == "gpu":
        import torch

        if not torch.cuda.is_available():
            reasons.append("its gpu budget needs a CUDA device, and none is visible")
    requires = getattr(exp, "requires", None)
    if requires is not None:
        reasons += [str(r) for r in requires(cfg)]
    return reasons


def _figures(folder: Path) -> list[str]:
    return [str(p) for p in sorted(folder.glob("*.png"))]


def _read(name: str, folder: Path, status: str, **kw) -> Entry:
    return Entry(name, status, folder=str(folder), claims=read_claims(folder / CLAIMS_NAME),
                 figures=_figures(folder), **kw)


def _check_folders(planned: list[tuple], overwrite: bool, log) -> None:
    """Before anything runs: refuse (one ValueError listing every case) where an experiment's folder holds
    results of other settings, or remove them with ``overwrite`` (``protocol.check_out``)."""
    found = []
    for name, exp, _, cfg, folder in planned:
        if overwrite:
            protocol.check_out(exp, cfg, folder, overwrite=True, log=log)
        elif conflicts := protocol.stored_conflicts(exp, cfg, folder):
            found.append(protocol.conflict_message(name, conflicts))
    if found:
        raise ValueError(f"{len(found)} experiment folder(s) hold results of other settings:\n  " + "\n  ".join(found))


def run_all(budget: str, out: str | Path, names: list[str] | None = None, *, check: bool = True,
            overwrite: bool = False, log=print) -> list[Entry]:
    """Run each experiment (all registered, or ``names``) at ``budget`` into ``out/<name>``; with ``check``, a
    folder there with results of other settings is refused before any runs, unless ``overwrite`` removes them."""
    out = Path(out)
    entries, planned = [], []
    for name in names if names is not None else sorted(protocol.EXPERIMENTS):
        try:
            exp = protocol.get_experiment(name)
            own = experiment_budget(exp, budget)
            cfg = protocol.config_for(exp, own)
        except (ImportError, TypeError, ValueError) as err:
            entries.append(Entry(name, "failed", reason=f"{type(err).__name__}: {err}"))
            log(f"{name}: failed to load: {err}")
            continue
        reasons = unmet_requirements(exp, own, cfg)
        if reasons:
            entries.append(Entry(name, "skipped", reason="; ".join(reasons), budget=own))
            log(f"{name}: skipped ({'; '.join(reasons)})")
            continue
        planned.append((name, exp, own, cfg, out / name))
        entries.append(None)  # its place in the report's order, filled once it has run
    if check or overwrite:
        _check_folders(planned, overwrite, log)
    ran = iter(planned)
    return [e if e is not None else _run_one(*next(ran), log=log) for e in entries]


def _run_one(name: str, exp, own: str, cfg, folder: Path, *, log=print) -> Entry:
    """Run and report one experiment into ``folder``: its entry, ``ran``, or ``failed`` with the reason."""
    log(f"{name}: running budget {own} into {folder}/")
    start = time.perf_counter()
    try:
        exp.run(cfg, folder)
        exp.report(folder)
    except Exception as err:  # noqa: BLE001 - one experiment's failure is reported, the rest still run
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        log(f"{name}: failed: {last}")
        return Entry(name, "failed", reason=last, folder=str(folder), budget=own, seconds=time.perf_counter() - start)
    if not (folder / CLAIMS_NAME).is_file():
        return Entry(name, "failed", reason=f"its report wrote no {folder / CLAIMS_NAME}", folder=str(folder),
                     budget=own, seconds=time.perf_counter() - start)
    return _read(name, folder, "ran", budget=own, seconds=time.perf_counter() - start)


def _where_found(names: list[str], found: list[str]) -> list[str]:
    """Each name as the whole read finds it: an experiment whose claims sit deeper (``probe_lag`` in
    ``probes/probe_lag``) goes by the folders of that name; one found nowhere stays as it is (missing)."""
    out = []
    for name in names:
        nested = [f for f in found if f != name and Path(f).name == name]
        out += [name] if name in found or not nested else nested
    return list(dict.fromkeys(out))


def _read_or_fail(name: str, folder: Path) -> Entry:
    """The entry of a folder's claims, or ``failed`` with the reason where they cannot be read (a corrupt or
    foreign claims.json), so one bad file costs its own row, not the whole report."""
    try:
        return _read(name, folder, "read")
    except (ValueError, OSError) as err:  # read_claims' and read_json's errors name the file and row
        return Entry(name, "failed", reason=f"{type(err).__name__}: {err}", folder=str(folder),
                     figures=_figures(folder))


def read_all(root: str | Path, names: list[str] | None = None) -> list[Entry]:
    """Each experiment's committed claims: every folder under ``root`` that holds a claims.json,
    at any depth (``results/probes/probe_lag``), and every registered experiment (or ``names``)
    that has none, as missing."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--from {root}: not a folder")
    found = sorted(p.parent.relative_to(root).as_posix() for p in root.rglob(CLAIMS_NAME))
    if not found:
        raise FileNotFoundError(f"--from {root}: no {CLAIMS_NAME} in it or below; point --from at a folder that "
                                "`emaprobe run NAME --out DIR/NAME` wrote into (the committed ones: results)")
    if names is None:
        seen = {Path(f).name for f in found}
        names = found + sorted(set(protocol.EXPERIMENTS) - seen)
    unknown = [n for n in names if n not in protocol.EXPERIMENTS and n not in found
               and n not in {Path(f).name for f in found}]
    if unknown:
        raise ValueError(f"--only {unknown[0]}: neither an experiment nor a folder of {root} with a {CLAIMS_NAME}; "
                         f"experiments: {sorted(protocol.EXPERIMENTS)}; folders: {found}")
    entries = []
    for name in _where_found(names, found):
        folder = root / name
        if (folder / CLAIMS_NAME).is_file():
            entries.append(_read_or_fail(name, folder))
        else:
            there = folder.is_dir()
            entries.append(Entry(name, "missing", folder=str(folder) if there else None,
                                 figures=_figures(folder) if there else [],
                                 reason=f"no {folder / CLAIMS_NAME} yet: `emaprobe run {name} --out {folder}` writes it"))
    return entries


# ---------------------------------------------------------------------------- rendering


def _num(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.4g}"


def _ours(c: Claim) -> str:
    return _num(c.ours) if c.std is None else f"{_num(c.ours)} ± {c.std:.2g}"


COLUMNS = ("experiment", "claim", "metric", "paper", "ours (± std)", "seeds", "scale", "labels", "verdict", "command")


def claim_rows(entries: list[Entry]) -> list[tuple[str, ...]]:
    """One row of text cells per claim, in COLUMNS order."""
    return [
        (e.name, c.claim, c.metric, _num(c.paper), _ours(c), str(c.seeds), c.scale, c.labels, c.verdict, c.command)
        for e in entries for c in e.claims
    ]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def claims_table_markdown(entries: list[Entry]) -> str:
    """The claims table alone, as Markdown (what the top-level README carries)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    if not any(e.claims for e in entries):
        lines.append("| " + " | ".join(["no claims.json found yet (see below)"] + [""] * (len(COLUMNS) - 1)) + " |")
    for row in claim_rows(entries):
        cells = list(row)
        cells[-1] = f"`{cells[-1]}`"
        cells[-2] = f"**{cells[-2]}**"
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def _status_line(e: Entry) -> str:
    bits = [e.status]
    if e.budget:
        bits.append(f"budget {e.budget}")
    if e.seconds is not None:
        bits.append(f"{e.seconds:.0f} s")
    return ", ".join(bits) + (f": {e.reason}" if e.reason else "")


def _counts(entries: list[Entry]) -> str:
    claims = [c for e in entries for c in e.claims]
    verdicts = {v: sum(c.verdict == v for c in claims) for v in protocol.VERDICTS}
    return f"{len(claims)} claims from {sum(bool(e.claims) for e in entries)} experiments: " + ", ".join(
        f"{n} {v}" for v, n in verdicts.items())


def render_markdown(report: Report, out: Path) -> str:
    lines = [
        "# emaprobe: the paper's claims, reproduced",
        "",
        f"Source: {report.source}. Built {report.record['time_utc']} at git {report.record['git_sha']} "
        f"on {report.record['device']}.",
        "",
        _counts(report.entries) + ".",
        "",
        claims_table_markdown(report.entries),
        "",
        "## Experiments",
        "",
    ]
    for e in report.entries:
        lines.append(f"- **{e.name}** ({_status_line(e)})" + (f": `{e.folder}/`" if e.folder else ""))
        for c in e.claims:
            if c.note:
                lines.append(f"  - {c.claim}: {c.note}")
    for e in report.entries:
        if e.figures:
            lines += ["", f"### {e.name}", ""]
            for fig in e.figures:
                rel = Path(fig).resolve()
                try:
                    rel = rel.relative_to(out.resolve())
                except ValueError:
                    rel = Path(_relpath(rel, out.resolve()))
                lines.append(f"![{e.name}: {Path(fig).stem}]({rel.as_posix()})")
    return "\n".join(lines) + "\n"


def _relpath(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target, start)


_CSS = """
body { font: 15px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #1f2328; padding: 0 1em; }
h1 { font-size: 1.7em; margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #d0d7de; }
.meta { color: #59636e; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; }
th, td { border: 1px solid #d0d7de; padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } tr:nth-child(even) td { background: #fbfcfd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; background: #f6f8fa; padding: 1px 4px; }
.verdict { font-weight: 600; padding: 1px 7px; border-radius: 10px; white-space: nowrap; }
.confirmed { background: #dafbe1; color: #116329; } .refuted { background: #ffebe9; color: #a40e26; }
.inconclusive { background: #fff8c5; color: #7d4e00; }
.status { color: #59636e; } .failed { color: #a40e26; }
figure { display: inline-block; margin: .5em 1em .5em 0; max-width: 100%; }
figure img { max-width: 100%; max-height: 520px; border: 1px solid #d0d7de; }
figcaption { color: #59636e; font-size: 13px; }
"""


def render_html(report: Report) -> str:
    esc = html.escape
    rows = []
    for row in claim_rows(report.entries):
        exp, claim, metric, paper, ours, seeds, scale, labels, verdict, command = map(esc, row)
        rows.append(
            f"<tr><td>{exp}</td><td>{claim}</td><td>{metric}</td><td class=num>{paper}</td><td class=num>{ours}</td>"
            f"<td class=num>{seeds}</td><td>{scale}</td><td>{labels}</td>"
            f"<td><span class='verdict {verdict}'>{verdict}</span></td><td><code>{command}</code></td></tr>"
        )
    if not rows:
        rows.append(f"<tr><td colspan={len(COLUMNS)}>no claims.json found yet (see below)</td></tr>")
    status = []
    for e in report.entries:
        cls = "failed" if e.status == "failed" else "status"
        notes = "".join(f"<li>{esc(c.claim)}: {esc(c.note)}</li>" for c in e.claims if c.note)
        status.append(f"<li><b>{esc(e.name)}</b> <span class={cls}>({esc(_status_line(e))})</span>"
                      + (f"<ul>{notes}</ul>" if notes else "") + "</li>")
    figures = []
    for e in report.entries:
        if not e.figures:
            continue
        figures.append(f"<h3>{esc(e.name)}</h3>")
        for fig in e.figures:
            data = base64.b64encode(Path(fig).read_bytes()).decode("ascii")
            figures.append(f"<figure><img alt='{esc(e.name)}: {esc(Path(fig).stem)}' src='data:image/png;base64,{data}'>"
                           f"<figcaption>{esc(Path(fig).name)}</figcaption></figure>")
    rec = report.record
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>emaprobe: the paper's claims, reproduced</title>
<style>{_CSS}</style></head><body>
<h1>emaprobe: the paper's claims, reproduced</h1>
<p class=meta>Source: {esc(report.source)}. Built {esc(rec['time_utc'])} at git {esc(str(rec['git_sha']))} on
{esc(rec['device'])}. {esc(_counts(report.entries))}.</p>
<table><thead><tr>{''.join(f'<th>{esc(c)}</th>' for c in COLUMNS)}</tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<h2>Experiments</h2><ul>{''.join(status)}</ul>
{'<h2>Figures</h2>' if figures else ''}{''.join(figures)}
</body></html>
"""


def write_report(report: Report, out: str | Path) -> dict[str, Path]:
    """OUT/report.md, OUT/report.html and OUT/report.json."""
    out = Path(out)
    paths = {
        "md": atomic_write_text(out / "report.md", render_markdown(report, out)),
        "html": atomic_write_text(out / "report.html", render_html(report)),
        "json": atomic_write_json(out / "report.json", {
            "source": report.source, "run_record": report.record,
            "experiments": [asdict(e) for e in report.entries],
        }),
    }
    return paths


def reproduce(
    budget: str | None = "smoke",
    from_dir: str | Path | None = None,
    out: str | Path | None = None,
    names: list[str] | None = None,
    *,
    overwrite: bool = False,
    log=print,
) -> Report:
    """Run every experiment at ``budget`` (or read ``from_dir``), then write the report into ``out`` (default
    ``DEFAULT_OUT``, the tool's scratch). In an ``out`` given, a folder ``out/<name>`` with results of other
    settings is refused, or replaced with ``overwrite`` (``run_all``)."""
    check, out = out is not None, Path(out) if out is not None else DEFAULT_OUT
    if from_dir is not None:
        entries = read_all(from_dir, names)
        source = f"{Path(from_dir).as_posix()}/ (committed results, read, not rerun)"
    else:
        if budget not in REPORT_BUDGETS:
            raise ValueError(f"unknown budget {budget!r}; choose one of {list(REPORT_BUDGETS)}")
        entries = run_all(budget, out, names, check=check, overwrite=overwrite, log=log)
        source = f"every experiment run at budget {budget!r} into {Path(out).as_posix()}/"
    report = Report(source=source, entries=entries, record=run_record())
    write_report(report, out)
    return report


__all__ = [
    "DEFAULT_OUT",
    "REPORT_BUDGETS",
    "Entry",
    "Report",
    "claims_table_markdown",
    "experiment_budget",
    "read_all",
    "render_html",
    "render_markdown",
    "reproduce",
    "run_all",
    "unmet_requirements",
    "write_report",
]
