"""``emaprobe reproduce``: every claim of the paper beside ours, in one report."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  emaprobe reproduce --from results                    the committed results: report in under a second
  emaprobe reproduce --from results --out results/reproduce    the committed report
  emaprobe reproduce --budget smoke                    every experiment, tiny, on CPU (under 2 minutes)
  emaprobe reproduce --budget gpu --out runs/full      every experiment at its GPU budget
  emaprobe reproduce --budget smoke --only roles       one experiment

Writes OUT/report.md, OUT/report.html (one self-contained page, figures embedded) and
OUT/report.json; with --budget, each experiment's own folder OUT/NAME/ as `emaprobe run`
writes it. The table has one row per claim: the paper's number, ours (± std over seeds),
seeds, scale, labels used, verdict, and the command that reruns it. --budget cpu and gpu
run each experiment's budget of that name, or its default where it has none. Experiments
that need a GPU or data that is absent are skipped with the reason; a failed one (or, with
--from, an unreadable claims.json) makes the exit code 1. Where --out names the folder, an
OUT/NAME that holds results of other settings is refused before anything runs; --overwrite
removes them instead.
"""


def _run(args: argparse.Namespace) -> int:
    from emaprobe.experiments.reproduce import DEFAULT_OUT, reproduce

    if args.from_dir is not None and args.budget is not None:
        raise ValueError("--from reads committed results and --budget runs the experiments; give one")
    if args.from_dir is not None and args.overwrite:
        raise ValueError("--overwrite lets a run replace results of other settings; --from runs nothing, so drop it")
    report = reproduce(budget=args.budget or "smoke", from_dir=args.from_dir, out=args.out, names=args.only,
                       overwrite=args.overwrite)
    for e in report.entries:
        print(f"  {e.name:<14} {e.status:<8} {len(e.claims)} claims" + (f"  ({e.reason})" if e.reason else ""))
    print(f"wrote {args.out or DEFAULT_OUT}/report.md, report.html and report.json")
    if report.failed:
        print(f"emaprobe reproduce: {len(report.failed)} experiment(s) failed: "
              f"{', '.join(e.name for e in report.failed)}")
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from emaprobe.experiments.reproduce import DEFAULT_OUT, REPORT_BUDGETS

    p = sub.add_parser(
        "reproduce",
        help="run (or read) every experiment and report each claim beside the paper's number",
        description="Build one report of every claim: run each registered experiment at a budget, "
        "or read the committed results with --from, then write Markdown and a self-contained HTML page.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--budget", choices=REPORT_BUDGETS, default=None,
                   help="run every experiment at this budget (default: smoke)")
    p.add_argument("--from", dest="from_dir", metavar="DIR", default=None,
                   help="read DIR/NAME/claims.json instead of running (e.g. results)")
    p.add_argument("--out", default=None, help=f"report folder (default: {DEFAULT_OUT}, scratch that each run "
                   "replaces)")
    p.add_argument("--only", action="append", metavar="NAME", help="only this experiment (repeatable)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --budget: remove results in OUT/NAME made with other settings, then run "
                   "(without it such a folder is refused)")
    p.set_defaults(func=_run)
