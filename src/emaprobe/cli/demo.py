"""``emaprobe demo``: the main job, small, on the embedded default data."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from emaprobe.experiments.demo import run

    only = None if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    if only == []:
        raise ValueError(f"--only {args.only!r} names no section; give some of scan,roles,content, or drop it")
    if args.smoke and only not in (None, ["scan"]):
        raise ValueError("--smoke runs the scan section only; drop --only")
    run(args.out, ["scan"] if args.smoke else only, smoke=args.smoke)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from emaprobe.experiments.demo import __doc__ as doc

    p = sub.add_parser(
        "demo",
        help="run everything emaprobe can do, small, on CPU (a few minutes)",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", help="folder for the demo's JSON (default: runs/demo)")
    p.add_argument("--only", metavar="A,B", help="run only these sections (comma-separated)")
    p.add_argument("--smoke", action="store_true", help="the scan section with 2 timing repeats: seconds (CI)")
    p.set_defaults(func=_run)
