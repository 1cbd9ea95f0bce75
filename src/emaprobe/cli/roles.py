"""``emaprobe roles``: Hebbian (zero labels) against a supervised BiGRU on grammatical roles."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  emaprobe roles                                   5 seeds: grammar A, B, deep, and UD EWT if found
  emaprobe roles --smoke --out /tmp/roles          the whole pipeline in under a minute
  emaprobe roles --seeds 2 --no-treebank           synthetic grammars only
  emaprobe roles --eval-grammar my_grammar.yaml    also score the trained models on your grammar
  emaprobe roles --treebank ~/ud/UD_German-GSD     any UD folder with *-ud-{train,dev,test}.conllu
  emaprobe roles --set hebbian.n_units=6 --set bigru.hidden=128 --set data.n_train=2000

--treebank defaults to $EMAPROBE_DATA/ud-english-ewt when that folder exists; otherwise the
treebank part is skipped with a note. Writes OUT/roles.json (run record, resolved config,
seeds, per-seed and mean ± std accuracies per role, depth and construction), OUT/README.md
(the table with the paper's numbers beside ours) and OUT/roles.png. Full run: about 6
minutes on an idle 2-core CPU; --smoke about 10 s. Grammar files: see `emaprobe/tasks/grammars/README.md`.
"""


def _parse_set(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes FIELD=VALUE (dotted for nested fields), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _run(args: argparse.Namespace) -> int:
    from emaprobe.experiments import roles
    from emaprobe.utils import apply_overrides
    from emaprobe.utils.paths import data_root

    cfg = roles.smoke_config() if args.smoke else roles.RolesConfig()
    overrides = _parse_set(args.set or [])
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        overrides["seeds"] = str(args.seeds)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    for path in args.eval_grammar or []:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--eval-grammar {path}: no such file")
    treebank = None
    if args.treebank is not None:
        treebank = Path(args.treebank).expanduser()
        if not treebank.is_dir():
            raise FileNotFoundError(f"--treebank {treebank}: not a folder")
    elif not args.no_treebank:
        root = data_root()
        if root is not None and (root / "ud-english-ewt").is_dir():
            treebank = root / "ud-english-ewt"
        else:
            print("note: no treebank (set EMAPROBE_DATA or pass --treebank DIR); UD part skipped")
    result = roles.run(cfg, args.out, eval_grammars=args.eval_grammar or [], treebank=treebank, quiet=args.quiet)
    print(roles.headline(result))
    print(f"wrote {Path(args.out) / 'roles.json'} and README.md in {result['wall_seconds']:.0f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "roles",
        help="grammatical roles: Hebbian (zero labels) vs supervised BiGRU (claim 2)",
        description="Train a label-free Hebbian role learner on EMA traces (and its causal variant) and a "
        "supervised BiGRU on grammar A; score within-A, transfer-B, deep-embedded and optional user grammars "
        "and a UD treebank; report accuracy per role, depth and construction, over seeds.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 seed: under a minute (CI)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5; 1 with --smoke)")
    p.add_argument("--eval-grammar", action="append", metavar="PATH.yaml",
                   help="also evaluate on sentences of this grammar (repeatable)")
    p.add_argument("--treebank", metavar="DIR", default=None,
                   help="UD treebank folder (default: $EMAPROBE_DATA/ud-english-ewt if present)")
    p.add_argument("--no-treebank", action="store_true", help="skip the treebank part")
    p.add_argument("--out", default="results/roles", help="output folder (default: results/roles)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a config field, dotted for nested ones (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
