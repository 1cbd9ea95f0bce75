"""``emaprobe lm``: train, evaluate and sample from SPEN and GPT language models."""

from __future__ import annotations

import argparse
import json
import sys

OVERRIDE_PREFIXES = ("model", "train")

TRAIN_EPILOG = """\
examples:
  emaprobe lm train --config spen-tiny --data ptb --steps 300 --out runs/spen-ema
  emaprobe lm train --config spen-tiny --data ptb --steps 300 --out runs/spen-sel --set model.mixer=selective
  emaprobe lm train --config gpt-tiny --data ptb --steps 300 --out runs/gpt --set train.optim.lr=3e-3
  emaprobe lm train --config spen-tiny --data ptb --steps 300 --out runs/spen-ema --resume
  torchrun --nproc_per_node=8 -m emaprobe.cli lm train --config spen-130m --data /data/fineweb-gpt2 \\
      --val /data/fineweb-gpt2-val --steps 20000 --out runs/spen-130m --set train.batch_size=32 --set train.seq_len=1024

Any field of the model config (see `emaprobe lm configs`) is set with --set model.FIELD=VALUE,
any field of the trainer with --set train.FIELD=VALUE (optimizer: --set train.optim.FIELD=VALUE).
Trainer fields: steps batch_size seq_len grad_accum seed log_every eval_every eval_batches
ckpt_every device dtype compile compile_mode tensorboard; optim: lr min_lr_ratio warmup_steps
weight_decay beta1 beta2 eps grad_clip. An unknown field is an error that lists the valid ones.

Data: `ptb` (Penn Treebank, word level; validation is ptb:valid), a folder written by
`emaprobe data prepare`, or a text/JSONL file, folder or glob (tokenized in memory with
--tokenizer). Without --val, the last 1% of a non-PTB training stream is held out.

OUT gets run.json (argv, git SHA, seed, resolved configs), metrics.jsonl, checkpoint.pt
(atomic; --resume continues it exactly), model/ (safetensors + config.json) and tokenizer/.
--resume of a run whose checkpoint is already at or past --steps prints that there is
nothing to train, changes no file (but brings model/ up to the checkpoint) and exits 0;
raise --steps to continue it. A resume with another model config, batch stream or
--data/--val is an error naming what differs; changed optimizer settings (lr, betas, eps,
weight decay, clipping) apply from the resumed step on. Without a checkpoint.pt, an OUT
holding a run stopped before its first checkpoint (run.json, metrics.jsonl) is started over
with --resume and refused without it; one holding a trained model/ is refused either way,
rather than overwritten. --resume says on stderr when it starts a run. A NaN or infinite
loss, validation loss or weight stops the run and keeps the last good checkpoint.
"""

EVAL_EPILOG = """\
examples:
  emaprobe lm eval --ckpt runs/spen-ema --data ptb           # PTB validation split
  emaprobe lm eval --ckpt runs/spen-ema --data ptb:test --json results/spen-ema-test.json

Prints loss (nats/token), perplexity and bits per byte, and writes them as JSON
(default: CKPT/eval-<data>.json). A bare `ptb` means ptb:valid here.
"""

GENERATE_EPILOG = """\
examples:
  emaprobe lm generate --ckpt runs/spen-ema --prompt "the company said" --tokens 40
  emaprobe lm generate --ckpt runs/gpt --prompt "the market" --temperature 0.8 --top-k 50 --seed 1

The prompt is read once; every new token is then fed alone through the model's
recurrent state (SPEN's traces, O(1) memory; GPT's KV cache) and printed as it comes.
A GPT's window does not slide: it reads only the prompt's last block_size - TOKENS + 1
tokens, so that the new ones fit, and says on stderr how many it dropped (the whole
prompt is still printed). A temperature below about 1e-38 is greedy, like 0.
"""

CONFIGS_EPILOG = """\
examples:
  emaprobe lm configs
  emaprobe lm configs --vocab-size 10000      # parameter counts at PTB's word vocabulary
"""


class _DefaultsFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks and appends each option's default (when it has one) to its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or action.required or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def split_overrides(items: list[str] | None) -> dict[str, dict[str, str]]:
    """``--set`` items -> ``{"model": {FIELD: VALUE}, "train": {FIELD: VALUE}}``.

    Each names ``model.FIELD`` or ``train.FIELD`` (``train.optim.FIELD``); the fields are checked
    against the config dataclasses later, where an unknown one is an error that lists the valid ones.
    """
    from emaprobe.cli.run import parse_set

    out: dict[str, dict[str, str]] = {p: {} for p in OVERRIDE_PREFIXES}
    for key, value in parse_set(items).items():
        head, _, field = key.partition(".")
        if head not in out or not field:
            raise ValueError(f"--set {key}={value}: name model.FIELD or train.FIELD (train.optim.FIELD for the optimizer)")
        out[head][field] = value
    return out


def _train(args) -> int:
    from emaprobe.train.dist import env_dist_info, shutdown_distributed

    args.overrides = split_overrides(args.set)
    if args.steps is not None:
        given = args.overrides["train"].get("steps")
        if given is not None and given != str(args.steps):
            raise ValueError(f"--steps {args.steps} and --set train.steps={given} disagree; give one")
        args.overrides["train"]["steps"] = str(args.steps)

    from emaprobe.data.splits import check_spec
    from emaprobe.data.tokenizers.gpt2 import RanksNotFound
    from emaprobe.train.lm import PeerFailed

    # a mistyped path is reported as such, before the tokenizer (gpt2 for a file) needs its ranks
    for flag, spec in (("--data", args.data), ("--val", args.val)):
        if spec is not None:
            check_spec(spec, flag)

    clean = False
    try:
        result = _run_training(args)
        clean = True
    except RanksNotFound:
        raise RanksNotFound("give --tokenizer a saved gpt2 tokenizer folder (data prepare writes one)") from None
    except PeerFailed as err:  # another rank's error ended the run; it printed its own
        print(f"emaprobe {args.command}: error: {err}", file=sys.stderr)
        return 1
    finally:
        shutdown_distributed(clean=clean)  # no closing barrier after a failure: the others may not come
    if not env_dist_info().is_main or result.get("already_done"):
        return 0  # an already finished run printed its note in train_lm
    print(training_summary(result, args.out))
    return 0


def training_summary(result: dict, out: str) -> str:
    """The last line of ``lm train``: validation metrics with their own token count, apart from training's."""
    val = result.get("val") or {}
    trained = f"trained {result['step']} steps on {result['tokens']:,} tokens"
    if result.get("resumed_from"):
        trained = (f"resumed from step {result['resumed_from']}, now {result['step']} steps on "
                   f"{result['tokens']:,} tokens in all")
    if not val:
        return f"{trained} (no validation split)  -> {out}"
    seen = f" over {val['val_tokens']:,} validation tokens" if "val_tokens" in val else ""
    return (
        f"step {val['step']}: val loss {val['val_loss']:.4f}  ppl {val['val_ppl']:.2f}  bpb {val['val_bpb']:.4f}"
        f"{seen};  {trained}  -> {out}"
    )


def _run_training(args) -> dict:
    from emaprobe.train.run import run_lm_training

    return run_lm_training(
        config=args.config,
        data=args.data,
        out_dir=args.out,
        model_overrides=args.overrides["model"],
        train_overrides=args.overrides["train"],
        val=args.val,
        tokenizer=args.tokenizer,
        resume=args.resume,
        quiet=args.quiet,
    )


def _eval(args) -> int:
    from emaprobe.train.run import evaluate_run

    result = evaluate_run(
        args.ckpt, args.data, json_path=args.json, batch_size=args.batch_size, seq_len=args.seq_len,
        max_batches=args.max_batches, device=args.device, quiet=args.quiet,
    )
    print(
        f"{result['data']}: loss {result['loss']:.4f} nats/token  ppl {result['ppl']:.2f}  "
        f"bpb {result['bpb']:.4f}  ({result['tokens']:,} tokens)  -> {result['json']}"
    )
    return 0


MAX_SEED = 2**64 - 1  # torch.manual_seed's largest


def _generate(args) -> int:
    from emaprobe.train.run import check_generate_args, stream_generate

    check_generate_args(args.tokens, args.temperature, args.top_k)  # before the prompt is printed
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed must lie in [0, 2**64 - 1] (what torch.manual_seed takes), got {args.seed}")

    for piece in stream_generate(
        args.ckpt, args.prompt, max_new_tokens=args.tokens, temperature=args.temperature, top_k=args.top_k,
        seed=args.seed, device=args.device, compile=args.compile,
    ):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _configs(args) -> int:
    from emaprobe.models import config_table

    rows = config_table(vocab_size=args.vocab_size)
    # one config under two names (gpt-130m is gpt-124m, named to pair with spen-130m): the later is an alias
    first_of: dict[str, str] = {}
    for r in rows:
        key = json.dumps(r["config"], sort_keys=True)
        r["alias_of"] = first_of.get(key)
        first_of.setdefault(key, r["name"])
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'config':<{width}}  {'params':>12}  {'vocab':>7}  fields")
    for r in rows:
        fields = f"alias of {r['alias_of']}" if r["alias_of"] else r["summary"]
        print(f"{r['name']:<{width}}  {r['params']:>12,}  {r['vocab_size']:>7}  {fields}")
    return 0


def register(sub) -> None:
    from emaprobe.train.config import TrainConfig

    fmt = argparse.RawDescriptionHelpFormatter
    lm = sub.add_parser(
        "lm",
        help="train, evaluate and sample SPEN / GPT language models",
        description="Language models whose context is EMA traces (SPEN) or attention (GPT): "
        "train on PTB or any corpus, evaluate loss / perplexity / bits per byte, generate.",
        epilog="run `emaprobe lm <train|eval|generate|configs> --help` for examples",
        formatter_class=fmt,
    )
    lm_sub = lm.add_subparsers(dest="lm_command", metavar="<train|eval|generate|configs>")
    lm.set_defaults(func=lambda args: (lm.print_help(), 2)[1])

    p = lm_sub.add_parser(
        "train", help="train a named config on a corpus", formatter_class=fmt, epilog=TRAIN_EPILOG,
        description="Train a language model (AdamW, warmup + cosine, clipping, accumulation, bf16 on GPU, "
        "DDP under torchrun) with atomic checkpoints and exact resume.",
    )
    p.add_argument("--config", required=True, help="named model config (see `emaprobe lm configs`)")
    p.add_argument("--data", required=True, help="training data spec: ptb, a prepared folder, file, folder or glob")
    p.add_argument("--val", default=None, help="validation data spec (default: ptb:valid for ptb, else 1%% held out)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimizer steps (default: {TrainConfig.steps}; same as --set train.steps=N)")
    p.add_argument("--set", action="append", metavar="model.FIELD=VALUE|train.FIELD=VALUE",
                   help="override a model or trainer config field, dotted (repeatable)")
    p.add_argument("--out", required=True, help="run folder (checkpoint, metrics, exported model)")
    p.add_argument(
        "--tokenizer", default=None, help="tokenizer name or saved folder (default: word for ptb, else gpt2)",
    )
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in --out (without one, start the run there, said on stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    # command: errors and interrupts name the subcommand ("emaprobe lm train: error: ...")
    p.set_defaults(func=_train, command="lm train", resume_hint="rerun with --resume to continue")

    p = lm_sub.add_parser(
        "eval", help="loss, perplexity and bits per byte of a trained model", formatter_class=fmt,
        epilog=EVAL_EPILOG, description="Evaluate a trained run on a whole data split.",
    )
    p.add_argument("--ckpt", required=True, help="run folder from `lm train` (or its model/ folder)")
    p.add_argument("--data", required=True, help="data spec: ptb (= ptb:valid), ptb:test, a prepared folder, a file...")
    p.add_argument("--json", default=None, help="where to write the result (default CKPT/eval-<data>.json)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per batch, >= 1 (default: the run's)")
    p.add_argument("--seq-len", type=int, default=None, help="window length, >= 1 (default: the run's)")
    p.add_argument("--max-batches", type=int, default=0, help="score only this many batches (0: all)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval, command="lm eval")

    p = lm_sub.add_parser(
        "generate", help="stream tokens from a trained model", formatter_class=_DefaultsFormatter,
        epilog=GENERATE_EPILOG,
        description="Sample a continuation of --prompt, one token at a time through the recurrent state.",
    )
    p.add_argument("--ckpt", required=True, help="run folder from `lm train` (or its model/ folder)")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--tokens", type=int, default=50, help="new tokens to generate (>= 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature, >= 0; 0 is greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens (default: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--compile", action="store_true",
                   help="compile the per-token step (CUDA graphs on GPU): the same tokens, faster after a "
                   "compile of tens of seconds; for models with a fixed-size state (SPEN's scan mixers)")
    p.set_defaults(func=_generate, command="lm generate")

    p = lm_sub.add_parser(
        "configs", help="list the named model configs with parameter counts", formatter_class=fmt,
        epilog=CONFIGS_EPILOG, description="The named SPEN and GPT configs and their sizes.",
    )
    p.add_argument("--vocab-size", type=int, default=None, help="count parameters at this vocabulary size")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_configs, command="lm configs")
