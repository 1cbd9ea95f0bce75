"""The one protocol every experiment follows, its registry, and the claims it writes.

An experiment is a module of ``emaprobe.experiments`` that defines:

    NAME: str                         its name, and the folder ``runs/<NAME>`` it writes by default
    Config                            a frozen dataclass: the whole experiment, every choice a field
    smoke() -> Config                 seconds on CPU (CI runs it)
    run(cfg, out: Path) -> None       measures, and writes JSON under ``out``
    report(out: Path) -> None         reads only the JSON under ``out``; writes README.md, the PNGs
                                      and ``claims.json``

and optionally ``BUDGETS: dict[str, Callable[[], Config]]``, further named budgets
(``"cpu"``, ``"gpu"``) beside ``smoke`` and the default ``Config()``, and
``requires(cfg) -> list[str]``, what ``cfg`` needs that is missing here (shared data, say;
empty when it can run), which ``emaprobe reproduce`` reports as the reason it skipped.

A folder named with ``--out`` holds the results of one config. Before ``run``, ``check_out``
refuses it where its results of that experiment were made with other settings (a rerun would
replace or mix them silently), unless ``--overwrite`` says to remove them; the same config
resumes. The default ``runs/<NAME>/`` is the tool's scratch, replaced by each run as before
(but for experiments whose ``run`` itself refuses to mix results: lm_ptb, lm_scale). Where its
results are one JSON, an experiment names it ``RESULT`` (its ``config`` is compared, but for the
fields of ``EXECUTION_FIELDS``: how a run executes, not what it measures); where they are one
file a run, it defines ``conflicts(cfg, out) -> [(file, {field: (there, now)})]`` itself.

``emaprobe run NAME [--smoke | --budget B] [--set a.b=c ...] [--out DIR]`` runs any of
them (``run_experiment``). Output goes to ``runs/<NAME>/`` unless ``--out`` says
otherwise; the committed results under ``results/`` are written only by an explicit
``--out results/<NAME>``.

``claims.json`` is a JSON list of ``Claim`` rows: the paper's number beside ours, with
seeds, scale, the labels used and a verdict, plus the command that reruns it.
``emaprobe reproduce`` reads these files and nothing else to build its report.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from emaprobe.utils import apply_overrides, atomic_write_json, read_json
from emaprobe.utils.config import config_diff, flatten_config

RUNS_DIR = Path("runs")
CLAIMS_NAME = "claims.json"
VERDICTS = ("confirmed", "refuted", "inconclusive")

# name -> module; a new experiment is one line here (or register_experiment at import time)
EXPERIMENTS: dict[str, str] = {
    "roles": "emaprobe.experiments.roles",
    "roles_tune": "emaprobe.experiments.roles_tune",
    "lm_ptb": "emaprobe.experiments.lm_ptb",
    "lm_scale": "emaprobe.experiments.lm_scale",
    "probe_lag": "emaprobe.experiments.probe_lag",
    "probe_mqar": "emaprobe.experiments.probe_mqar",
    "probe_depth": "emaprobe.experiments.probe_depth",
    "probe_map": "emaprobe.experiments.probe_map",
}

REQUIRED = ("NAME", "Config", "smoke", "run", "report")


def register_experiment(name: str, module: str) -> None:
    """Make ``emaprobe run NAME`` find ``module`` (a dotted import path)."""
    if name in EXPERIMENTS and EXPERIMENTS[name] != module:
        raise ValueError(f"experiment {name!r} is already registered as {EXPERIMENTS[name]}")
    EXPERIMENTS[name] = module


def get_experiment(name: str) -> ModuleType:
    """The module of experiment ``name``; an unknown name lists the valid ones."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}")
    module = importlib.import_module(EXPERIMENTS[name])
    missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"{module.__name__} does not follow the experiment protocol: it lacks {missing}")
    return module


def budgets(exp: ModuleType) -> dict[str, Callable[[], Any]]:
    """Every named budget of ``exp``: ``smoke``, ``default`` (``Config()``) and its own ``BUDGETS``."""
    return {"smoke": exp.smoke, "default": exp.Config, **getattr(exp, "BUDGETS", {})}


def config_for(exp: ModuleType, budget: str = "default", overrides: dict[str, str] | None = None) -> Any:
    """The config of ``budget`` with dotted ``{"a.b": "c"}`` overrides applied."""
    table = budgets(exp)
    if budget not in table:
        raise ValueError(f"experiment {exp.NAME!r} has no budget {budget!r}; choose one of {sorted(table)}")
    cfg = table[budget]()
    return apply_overrides(cfg, dict(overrides or {})) if overrides else cfg


def default_out(name: str) -> Path:
    return RUNS_DIR / name


def out_folder(name: str, out: str | Path | None) -> Path:
    """The folder a run of ``name`` writes: ``out``, or ``runs/<name>`` when None; an empty ``out`` is refused."""
    if out is None:
        return default_out(name)
    if not str(out).strip():
        raise ValueError("--out is empty; name a folder (an empty path would write into the current one)")
    return Path(out)


def run_experiment(
    name: str,
    *,
    budget: str = "default",
    overrides: dict[str, str] | None = None,
    out: str | Path | None = None,
    report_only: bool = False,
    overwrite: bool = False,
) -> Path:
    """Run experiment ``name`` at ``budget`` into ``out`` (default ``runs/<name>``), then report.

    An ``out`` given may already hold results of the same config (they resume); results made with another
    are refused (``check_out``), or removed first with ``overwrite``."""
    exp = get_experiment(name)
    folder = out_folder(exp.NAME, out)
    if report_only:
        # a report reads only the JSON already there: a budget or an override would be silently ignored
        asked = [flag for flag, given in (("--smoke/--budget", budget != "default"), ("--set", bool(overrides)),
                                           ("--overwrite", overwrite)) if given]
        if asked:
            raise ValueError(f"--report-only rebuilds the report from the JSON already in {folder} and runs nothing, "
                             f"so {' and '.join(asked)} would be ignored; drop {'them' if len(asked) > 1 else 'it'}, "
                             "or drop --report-only to run")
    else:
        cfg = config_for(exp, budget, overrides)
        prepare_out(exp, cfg, folder, named=out is not None, overwrite=overwrite)
        exp.run(cfg, folder)
    try:
        exp.report(folder)
    except (KeyError, IndexError, TypeError) as err:  # a report reads its JSON by field names
        raise ValueError(f"{folder}: the {exp.NAME} JSON there lacks what the report reads ({type(err).__name__}: "
                         f"{err}); was it written by `emaprobe run {exp.NAME}` of this version? Rerun it into "
                         "that folder, or point --out at one that it wrote") from err
    return folder


# ---------------------------------------------------------------------------- one config a folder


def diff_text(diff: dict[str, tuple[Any, Any]], most: int = 6) -> str:
    """``"seeds: 5 there, 1 now; lr: ..."``, the first ``most`` fields, then how many more."""
    # top-level fields first: a message that names only the first few names the plainest (seeds, steps)
    shown = sorted(diff.items(), key=lambda item: (item[0].count("."), item[0]))[:most]
    parts = [f"{k}: {there!r} there, {now!r} now" for k, (there, now) in shown]
    more = len(diff) - most
    return "; ".join(parts) + (f"; and {more} more field{'s' * (more > 1)}" if more > 0 else "")


def stored_conflicts(exp: ModuleType, cfg: Any, out: str | Path) -> list[tuple[Path, dict[str, tuple[Any, Any]]]]:
    """``exp``'s result files in ``out`` made with settings other than ``cfg``'s: ``[(file, differing fields)]``.

    Its own ``conflicts(cfg, out)`` where it has one; else its ``RESULT`` JSON's ``config`` against ``cfg``, but
    for its ``EXECUTION_FIELDS``. A result that records no config counts as made by another."""
    out = Path(out)
    own = getattr(exp, "conflicts", None)
    if own is not None:
        return own(cfg, out)
    name = getattr(exp, "RESULT", None)
    if name is None or not (out / name).is_file():
        return []
    path = out / name
    stored = read_json(path)
    there = stored.get("config") if isinstance(stored, dict) else None
    if not isinstance(there, dict):
        return [(path, {"config": ("none recorded", "this run's")})]
    diff = config_diff(there, dataclasses.asdict(cfg), getattr(exp, "EXECUTION_FIELDS", ()))
    return [(path, diff)] if diff else []


def prepare_out(exp: ModuleType, cfg: Any, folder: Path, *, named: bool, overwrite: bool = False) -> None:
    """Before ``exp`` runs ``cfg`` into ``folder``: refuse a README.md or claims.json there that another wrote
    (``foreign_reports``; ``overwrite`` lets the run replace them), and, in a folder the user ``named`` (or with
    ``overwrite``), results of other settings (``check_out``); the default ``runs/<name>`` is scratch."""
    foreign = [] if overwrite else foreign_reports(exp.NAME, folder)
    if foreign:
        raise ValueError(f"{foreign[0]} was not written by `emaprobe run {exp.NAME}` (another experiment's, or yours), "
                         f"and this run would replace it with {exp.NAME}'s: choose another --out, or pass --overwrite "
                         "to replace it")
    if named or overwrite:
        check_out(exp, cfg, folder, overwrite=overwrite)


def foreign_reports(name: str, out: str | Path) -> list[Path]:
    """The report files a run of experiment ``name`` writes (README.md, claims.json) that ``out`` already holds
    and that another wrote: a README naming neither ``emaprobe.experiments.<name>`` nor ``emaprobe run <name>``,
    a claims.json with a row whose command does not run ``name``."""
    out = Path(out)
    found = []
    readme = out / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if not re.search(rf"emaprobe\.experiments\.{name}\b|emaprobe run {name}\b", text):
            found.append(readme)
    claims_path = out / CLAIMS_NAME
    if claims_path.is_file():
        try:
            rows = read_json(claims_path)
        except ValueError:
            rows = None
        ours = isinstance(rows, list) and all(isinstance(r, dict) and re.search(rf"\brun {name}\b", str(r.get("command")))
                                              for r in rows)
        if not ours:
            found.append(claims_path)
    return found


def conflict_message(name: str, found: list[tuple[Path, dict]]) -> str:
    """One error for results made with other settings: the first file and its fields, how many more, the ways out."""
    path, diff = found[0]
    others = f" (and {len(found) - 1} more of its result files)" if len(found) > 1 else ""
    return (f"{path} holds {name} results made with other settings ({diff_text(diff)}){others}; a run would replace "
            "or mix them silently, so it is refused: choose another --out, or pass --overwrite to remove them first")


def check_out(exp: ModuleType, cfg: Any, out: str | Path, *, overwrite: bool = False, log=print) -> None:
    """Refuse to run ``cfg`` into ``out`` where ``exp``'s results there were made with other settings (a ValueError
    naming the file and the fields); the same config goes on (resumes). With ``overwrite`` those files are removed
    instead, so the run starts afresh."""
    found = stored_conflicts(exp, cfg, out)
    if not found:
        return
    if not overwrite:
        raise ValueError(conflict_message(exp.NAME, found))
    for path, diff in found:
        path.unlink()
        log(f"removed {path}: made with other settings ({diff_text(diff, most=3)}); --overwrite")


@dataclass(frozen=True)
class Claim:
    """One row of ``claims.json``: a paper claim, our measurement of it, and the evidence."""

    claim: str  # a stable id, e.g. "ppl_ratio_130m"
    metric: str  # what ``ours`` measures, with its unit
    paper: float | None  # the paper's figure; None where the paper gives none
    ours: float
    std: float | None  # across seeds; None for one seed
    seeds: int
    scale: str  # params, tokens, data
    verdict: str  # one of VERDICTS
    command: str  # the command that reruns it
    labels: str = "n/a"  # labelled examples the measurement used
    note: str = ""

    def __post_init__(self) -> None:
        if not self.claim or not isinstance(self.claim, str):
            raise ValueError(f"claim id must be a non-empty string, got {self.claim!r}")
        if self.verdict not in VERDICTS:
            raise ValueError(f"claim {self.claim!r}: verdict must be one of {list(VERDICTS)}, got {self.verdict!r}")
        for field in ("paper", "ours", "std"):
            value = getattr(self, field)
            if value is None and field != "ours":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"claim {self.claim!r}: {field} must be a finite number, got {value!r}")
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"claim {self.claim!r}: seeds must be an integer >= 1, got {self.seeds!r}")
        if self.seeds == 1 and self.std is not None:
            raise ValueError(f"claim {self.claim!r}: std must be None for one seed (a spread over one seed is "
                             f"undefined, not {self.std!r})")
        for field in ("metric", "scale", "command"):
            if not getattr(self, field):
                raise ValueError(f"claim {self.claim!r}: {field} must not be empty")


def write_claims(out: str | Path, claims: Sequence[Claim]) -> Path:
    """Write ``out/claims.json`` (atomic); ids must be unique."""
    ids = [c.claim for c in claims]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate claim ids {dupes}")
    return atomic_write_json(Path(out) / CLAIMS_NAME, [dataclasses.asdict(c) for c in claims])


def read_claims(path: str | Path) -> list[Claim]:
    """Parse a ``claims.json``; a malformed row raises a ValueError naming the file and row."""
    path = Path(path)
    if path.is_dir():
        path = path / CLAIMS_NAME
    rows = read_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of claims, got {type(rows).__name__}")
    fields = {f.name for f in dataclasses.fields(Claim)}
    claims = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {i} is not an object")
        unknown = sorted(set(row) - fields)
        if unknown:
            raise ValueError(f"{path}: row {i} has unknown fields {unknown}; valid: {sorted(fields)}")
        try:
            claims.append(Claim(**row))
        except TypeError as err:
            raise ValueError(f"{path}: row {i}: {err}") from err
        except ValueError as err:
            raise ValueError(f"{path}: row {i}: {err}") from err
    return claims


def verdict_from_interval(low: float, high: float, *, threshold: float, above_confirms: bool = True) -> str:
    """``confirmed`` when a confidence interval lies wholly on the claim's side of ``threshold``,
    ``refuted`` when wholly on the other side, else ``inconclusive``."""
    if low > high:
        raise ValueError(f"interval low {low} > high {high}")
    above, below = low > threshold, high < threshold
    if above:
        return "confirmed" if above_confirms else "refuted"
    if below:
        return "refuted" if above_confirms else "confirmed"
    return "inconclusive"


# the tolerance of the paper's "identical loss" (nats a token): the language-model experiments' predictor claims
SAME_LOSS_NATS = 0.02


def verdict_no_difference(mean: float, low: float, high: float, *, tol: float) -> str:
    """For a claim that two things do not differ (the paper's "identical loss"): ``confirmed`` when the
    confidence interval lies within +-``tol``, or excludes 0 with a mean under ``tol``; ``refuted`` when it
    excludes 0 with a mean of ``tol`` or more; else ``inconclusive``."""
    if low > high:
        raise ValueError(f"interval low {low} > high {high}")
    if low >= -tol and high <= tol:
        return "confirmed"
    if low > 0 or high < 0:
        return "refuted" if abs(mean) > tol else "confirmed"
    return "inconclusive"


def no_difference_note(verdict: str, low: float, high: float, *, tol: float) -> str:
    """``verdict_no_difference``'s rule in words, for a claim's note; where ``verdict`` is confirmed by the mean
    alone (the interval excludes 0 and reaches past +-``tol``), it says so and where the interval ends."""
    text = (f"Verdict rule: confirmed when the interval lies within +-{tol} nats, or excludes 0 with a mean under "
            f"{tol} (a real but small difference); refuted when it excludes 0 with a mean of {tol} or more; "
            "else inconclusive.")
    if verdict == "confirmed" and not (low >= -tol and high <= tol):
        end = low if low < -tol else high
        text += f" Confirmed here by the mean alone: the interval reaches {end:+.4f}, past +-{tol}."
    return text


__all__ = [
    "CLAIMS_NAME",
    "EXPERIMENTS",
    "RUNS_DIR",
    "SAME_LOSS_NATS",
    "VERDICTS",
    "Claim",
    "budgets",
    "check_out",
    "config_diff",
    "config_for",
    "conflict_message",
    "default_out",
    "diff_text",
    "flatten_config",
    "get_experiment",
    "no_difference_note",
    "read_claims",
    "register_experiment",
    "run_experiment",
    "stored_conflicts",
    "verdict_from_interval",
    "verdict_no_difference",
    "write_claims",
]
