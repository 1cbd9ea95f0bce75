"""``emaprobe run``: any experiment, by name, through the one experiment protocol."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  emaprobe run --list                               every experiment and its budgets
  emaprobe run lm_scale --smoke                     seconds on CPU; writes runs/lm_scale/
  emaprobe run roles --set seeds=2                  any config field, dotted for nested ones
  emaprobe run lm_scale --budget gpu --out results/lm_scale     the committed results
  emaprobe run lm_scale --report-only --out results/lm_scale    rebuild README, plots, claims
  emaprobe run roles --smoke --out runs/roles --overwrite        replace results of other settings

Output goes to runs/NAME/ (ignored by git) unless --out names another folder; write into
results/ only on purpose. A folder named with --out holds one config's results: the same
command goes on from where it stopped, and a run whose settings differ from those of the
results already there is refused (it names the file and the fields) unless --overwrite
removes them; the default runs/NAME/ is scratch that a run replaces (lm_ptb and lm_scale,
which keep a file a run, still refuse to mix runs of other settings there).
lm_scale keeps its checkpoints and token caches apart from the output, in
runs/lm_scale-work/ under the current folder (--set work_dir=DIR moves them), and says so
when it starts. Each experiment writes JSON, then a report made from that JSON
alone: README.md, PNG plots and claims.json (the paper's figure beside ours, with seeds,
scale, labels used and a verdict).
"""


def parse_set(items: list[str] | None) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": "1", "c": "x"}``; a malformed item is a named error."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes FIELD=VALUE (dotted for nested fields), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _run(args: argparse.Namespace) -> int:
    from emaprobe.experiments.protocol import EXPERIMENTS, budgets, get_experiment, run_experiment

    if args.list or args.name is None:  # an empty name is an unknown experiment (get_experiment says so)
        for name in sorted(EXPERIMENTS):
            exp = get_experiment(name)
            doc = (exp.__doc__ or "").strip().splitlines()
            print(f"{name:<14} budgets: {', '.join(budgets(exp))}\n{'':<14} {doc[0] if doc else ''}")
        return 0
    if args.smoke and args.budget not in (None, "smoke"):
        raise ValueError("--smoke and --budget name two budgets; give one")
    budget = "smoke" if args.smoke else (args.budget or "default")
    folder = run_experiment(args.name, budget=budget, overrides=parse_set(args.set), out=args.out,
                            report_only=args.report_only, overwrite=args.overwrite)
    print(f"wrote {folder}/ (README.md, claims.json and the JSON it was made from)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run an experiment by name (roles, lm_ptb, lm_scale, ...) and write its report",
        description="Run one experiment of emaprobe through its Config, then write its report "
        "(README.md, plots, claims.json) from the JSON it wrote.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", help="the experiment (see --list)")
    p.add_argument("--list", action="store_true", help="list the experiments and their budgets")
    p.add_argument("--smoke", action="store_true", help="the smoke budget: seconds on CPU (what CI runs)")
    p.add_argument("--budget", default=None, help="a named budget: smoke, default, or one the experiment defines")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a config field, dotted for nested ones (repeatable)")
    p.add_argument("--out", default=None, help="output folder (default: runs/NAME)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the report from the JSON already in --out (takes no --smoke, --budget or --set)")
    p.add_argument("--overwrite", action="store_true",
                   help="remove this experiment's results in --out that were made with other settings, then run "
                   "(without it such a folder is refused)")
    p.set_defaults(func=_run)
