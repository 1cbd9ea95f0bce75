"""``emaprobe roles``: an alias of ``emaprobe run roles`` with the role study's own flags."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

EPILOG = """\
examples:
  emaprobe roles                                   5 seeds: grammar A, B, deep, the label-budget
                                                   curve, and UD EWT if $EMAPROBE_DATA has it
  emaprobe roles --smoke --out /tmp/roles          the whole pipeline in seconds
  emaprobe roles --seeds 2 --no-treebank           synthetic grammars only
  emaprobe roles --eval-grammar my_grammar.yaml    also score the trained models on your grammar
                                                   (and count its tokens unseen in training)
  emaprobe roles --treebank ~/ud/UD_German-GSD     any UD folder with *-ud-{train,dev,test}.conllu
  emaprobe roles --set two_stage.n_units=200 --set budgets=[25,100]

The same as `emaprobe run roles` (flags map onto Config fields: --eval-grammar ->
eval_grammars, --treebank / --no-treebank -> treebank, --seeds -> seeds). Writes
OUT/roles.json, then README.md, roles.png, roles_budget.png and claims.json from it.
Default OUT is runs/roles; the committed results are written with --out results/roles.
Grammar files: see emaprobe/tasks/grammars/README.md.
"""


def _run(args: argparse.Namespace) -> int:
    from emaprobe.cli.run import parse_set
    from emaprobe.experiments import roles
    from emaprobe.experiments.protocol import config_for, get_experiment, out_folder, prepare_out

    exp = get_experiment(roles.NAME)
    overrides = parse_set(args.set)
    if args.treebank is not None and args.no_treebank:
        raise ValueError("--treebank DIR and --no-treebank contradict each other; give one")
    for flag, field, value in (("--seeds", "seeds", args.seeds), ("--treebank", "treebank", args.treebank),
                               ("--no-treebank", "treebank", args.no_treebank or None)):
        if value is not None and field in overrides:
            raise ValueError(f"{flag} and --set {field}={overrides[field]} both set {field}; give one")
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        overrides["seeds"] = str(args.seeds)
    cfg = config_for(exp, "smoke" if args.smoke else "default", overrides)
    for path in args.eval_grammar or []:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--eval-grammar {path}: " + ("a folder, not a grammar file" if Path(path).is_dir()
                                                                    else "no such file"))
    if args.eval_grammar:
        cfg = dataclasses.replace(cfg, eval_grammars=tuple(str(Path(p)) for p in args.eval_grammar))
    if args.treebank is not None:
        folder = Path(args.treebank).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"--treebank {folder}: not a folder")
        cfg = dataclasses.replace(cfg, treebank=str(folder))
    elif args.no_treebank:
        cfg = dataclasses.replace(cfg, treebank="")
    elif roles.resolve_treebank(cfg.treebank) is None and cfg.treebank == "auto":
        print("note: no treebank (set EMAPROBE_DATA or pass --treebank DIR); UD part skipped")
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    out = out_folder(roles.NAME, args.out)
    prepare_out(exp, cfg, out, named=args.out is not None, overwrite=args.overwrite)  # as `emaprobe run roles`
    result = roles.run(cfg, out)
    roles.report(out)
    print(roles.headline(result))
    print(f"wrote {out}/ (roles.json, README.md, roles.png, roles_budget.png, claims.json) "
          f"in {result['wall_seconds']:.0f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "roles",
        help="grammatical roles: Hebbian learners vs a supervised BiGRU, and the label-budget curve (claim 2)",
        description="Alias of `emaprobe run roles`: train the spec Hebbian learner, the two-stage Hebbian learner "
        "(both label-free in training) and a supervised BiGRU on grammar A; score within-A, transfer-B, "
        "deep-embedded, optional user grammars and a UD treebank; draw the label-budget curve.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 seed: seconds (CI)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5; 1 with --smoke)")
    p.add_argument("--eval-grammar", action="append", metavar="PATH.yaml",
                   help="also evaluate on sentences of this grammar (repeatable)")
    p.add_argument("--treebank", metavar="DIR", default=None,
                   help="UD treebank folder (default: $EMAPROBE_DATA/ud-english-ewt if present)")
    p.add_argument("--no-treebank", action="store_true", help="skip the treebank part")
    p.add_argument("--out", default=None, help="output folder (default: runs/roles)")
    p.add_argument("--overwrite", action="store_true",
                   help="remove roles results made with other settings from --out first (without it they are refused)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a config field, dotted for nested ones (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
