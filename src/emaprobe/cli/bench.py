"""``emaprobe bench``: speed against peers and the physical floor, printed and saved as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

# each benchmark's help shows its own examples; `emaprobe bench --help` shows both
SCAN_EXAMPLES = """\
  emaprobe bench scan                           CPU, default shapes, JSON to runs/bench
  emaprobe bench scan --shape 8x8192x256        the target shape only
  emaprobe bench scan --out results/bench       the committed CPU figures (on purpose only)
  emaprobe bench scan --device cuda --out results/bench
                                                Triton kernels against the copy-bandwidth floor
  emaprobe bench scan --device cuda --grid --out results/bench
                                                the forwards over 16 shapes, time / floor heat maps
  emaprobe bench scan --device cuda --grid --shape 32x2048x256 --shape 8x2048x1024 --tag t2048
                                                two of them, in files of their own
  emaprobe bench scan --device cuda --grid --sweep --tag sweep
                                                the grid, and at its segmented shapes each forward's plan
                                                with one change at a time: which plan is fastest on this card
  emaprobe bench scan --device cuda --grid --sweep --tag sweep --resume
                                                the same after a run cut off: the shapes already in its JSON
                                                are kept, the rest measured
  emaprobe bench scan --device cuda --shape 16x2048x768 --no-peers --tag host
                                                one shape, in files of its own
"""
SCAN_NOTES = """\
Output goes to runs/bench/ (ignored by git) unless --out names another folder.
Each figure is a median of repeats; the peers (scipy.signal.lfilter on CPU, the
PyTorch step loop, FFT convolution and kernel libraries on GPU) run in the same process.
"""
FFN_EXAMPLES = """\
  emaprobe bench ffn                            top-k FFN forms (dense, gather, mask), CPU
  emaprobe bench ffn --device cuda --width 130m the same on a GPU (bf16 autocast)
"""
FFN_NOTES = """\
Output: ffn_<device>.json in runs/bench/ (ignored by git) unless --out names another folder.
Each figure is a median of --repeats, the forms taking turns; speed-up = dense's time / the form's.
"""
LOSS_EXAMPLES = """\
  emaprobe bench loss --device cuda             the LM loss's forms over 16,384 x 50,257 bf16 logits,
                                                alone and with the 768-wide tied head before it
"""
LOSS_NOTES = """\
Output: loss_<card>.json in runs/bench/ (ignored by git) unless --out names another folder.
Each figure is a median of back-to-back calls; x = time over the floor: the fused passes' bytes at the copy
bandwidth, and for the head's rows its products' FLOPs at the card's dense bf16 peak too.
"""
COMPARE_EXAMPLES = """\
  emaprobe bench compare --base A1.json A2.json --new B1.json B2.json --metric x_sel_fwd_vs_floor
                                                an A/B: runs of the tree before against the tree after
"""
COMPARE_EPILOG = """\
examples:
  emaprobe bench compare --base runs/bench/scan_grid_nvidia-h100-80gb-hbm3_old_1.json \\
      runs/bench/scan_grid_nvidia-h100-80gb-hbm3_old_2.json --new runs/bench/scan_grid_nvidia-h100-80gb-hbm3.json \\
      runs/bench/scan_grid_nvidia-h100-80gb-hbm3_new_2.json --metric x_sel_fwd_vs_floor --metric x_ema_fwd_vs_floor
                                                a kernel change judged over the grid (lower is nearer the floor)
  emaprobe bench compare --base lm_a.json --new lm_b.json --key part --key model --key T --key B \\
      --key prompt --key compiled --metric tokens_per_s
                                                bench lm rows matched on these fields only (their FLOP
                                                counts may differ between trees)
How to make the runs: the benchmark on the tree before and after, alternated (before, after, before,
after), in one sitting on one card, each with its own --tag. Rows are matched by every non-float field
unless --key names them; each float field is averaged over a side's runs; ratio = new / base. Prints a
summary line a field (geometric mean of the ratios, the least and greatest) and, for each --metric, the
rows. Output: compare_<benchmark>_<card>[_<tag>].json (and .png of the --metric ratios) in runs/bench/.
Runs of different cards or benchmarks are refused.
"""
EPILOG = "examples:\n" + SCAN_EXAMPLES + FFN_EXAMPLES + LOSS_EXAMPLES + COMPARE_EXAMPLES + SCAN_NOTES
SCAN_EPILOG = "examples:\n" + SCAN_EXAMPLES + SCAN_NOTES
FFN_EPILOG = "examples:\n" + FFN_EXAMPLES + FFN_NOTES
LOSS_EPILOG = "examples:\n" + LOSS_EXAMPLES + LOSS_NOTES

LM_EPILOG = """\
examples:
  emaprobe bench lm --quick --device cpu        tiny configs, short lengths: the smoke run
                                                (half a minute to two minutes on 2 CPU cores)
  emaprobe bench lm                             spen-130m (every mixer) and gpt-124m on the GPU,
                                                T = 1k, 4k, 16k, eager and compiled; generation
                                                at batch 1 and 32 after 2k and 32k prompts
  emaprobe bench lm --mixers ema --config spen-130m --compile on --no-train
                                                only SPEN-130m's compiled generation
  emaprobe bench lm --out results/bench         the committed figures (on purpose only)
  emaprobe bench lm --mixers ema --seq-lens 8192,16384 --no-generate --tag long
                                                the long-T training rows, in files of their own
  emaprobe bench lm --device cuda --resume      the same grid after an interrupted run: rows already in
                                                runs/bench/bench_lm_<card>.json are kept, the rest measured
  emaprobe bench lm --merge runs/bench/bench_lm_*_part*.json --tag grid
                                                join parts into one JSON and PNG (rows keep their source)
  emaprobe bench lm --config spen-130m --mixers ema --seq-lens 8192 --compile on --no-generate --profile
                                                where SPEN-130m's compiled step spends its time, kernel by kernel
  emaprobe bench lm --mixers ema --seq-lens 1024,8192 --compile on --no-generate --compile-mode reduce-overhead
                                                the compiled steps replayed as CUDA graphs
Output: bench_lm_<card>[_<tag>].json and .png in runs/bench/ (ignored by git) unless --out
names another folder. Each figure is a median of --repeats; warm-up steps (and compiling) are
not timed. MFU = FLOPs per token x tokens/s / peak FLOP/s (the formula is in the JSON);
it is null on CPU unless --peak-tflops is given. Each model is also set against GPT at the
same T ("against GPT" in the printout, versus in the JSON, a third plot panel): its speed
ratio beside the ratio of executed FLOPs a token (causal attention counted at half), the
speed the two would have at equal TFLOP/s; --merge computes it for older files too.
"""


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def _check_out(out: str) -> None:
    """``--out`` must be a folder, or a path where one can be made: checked now, not after the benchmark ran."""
    from emaprobe.utils.io import file_in_the_way

    path = Path(out).expanduser()
    blocker = file_in_the_way(path)
    if blocker is not None:
        where = "" if blocker == path else f": {blocker}"
        raise ValueError(f"--out {out}{where} is a file, not a folder; name a folder for the JSON")


def _lm(args: argparse.Namespace) -> int:
    import torch

    from emaprobe.experiments.bench_lm import BenchConfig, merge, quick_config, run

    mixers = None
    if args.mixers is not None:
        mixers = tuple(m.strip() for m in args.mixers.split(",") if m.strip())
        if not mixers:
            raise ValueError(f"--mixers {args.mixers!r} names no mixer; give them comma-separated, e.g. ema,selective")
    given = {
        "configs": tuple(args.config) if args.config else None,
        "mixers": mixers,
        "seq_lens": args.seq_lens, "tokens_per_step": args.tokens_per_step, "steps": args.steps,
        "warmup": args.warmup, "repeats": args.repeats, "compile": args.compile, "compile_mode": args.compile_mode,
        "gen_batches": args.gen_batch, "gen_prompts": args.gen_prompts, "gen_tokens": args.gen_tokens,
        "train": False if args.no_train else None, "generate": False if args.no_generate else None,
        "trainer": True if args.trainer else None, "profile": True if args.profile else None,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if args.merge:
        extra = sorted(given) + [f for f in ("quick", "device", "peak_tflops", "resume") if getattr(args, f)]
        if extra:
            raise ValueError(f"--merge measures nothing, so it takes only --out and --tag; drop {extra}")
        _check_out(args.out)
        merge(args.merge, out_dir=args.out, tag=args.tag or "merged")
        return 0
    bc = quick_config(**given) if args.quick else BenchConfig(**given)
    _check_out(args.out)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    run(bc, device=device, out_dir=args.out, peak_tflops=args.peak_tflops, tag=args.tag, resume=args.resume)
    return 0


def _scan(args: argparse.Namespace) -> int:
    import torch

    from emaprobe.experiments.bench_scan import DEFAULT_SHAPES, check_shapes_fit, parse_shape, run_cpu

    shapes = [parse_shape(s) for s in args.shape] if args.shape else list(DEFAULT_SHAPES)
    _check_out(args.out)
    if args.device != "cuda" and (args.grid or args.sweep or args.tag or args.resume):
        raise ValueError("--grid, --sweep, --tag and --resume are for the CUDA benchmark: add --device cuda")
    if args.resume and not args.grid:
        raise ValueError("--resume keeps the shapes of an earlier --grid run: add --grid")
    if args.grid and args.shape and not args.tag:
        raise ValueError("--grid with --shape times those shapes only: add --tag, so that scan_grid_<card>.json "
                         "keeps the whole grid's figures")
    if args.device == "cuda":
        if args.repeats is not None:
            raise ValueError("--repeats is for the CPU benchmark; the CUDA one times CUDA-graph replays its own way")
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible to torch")
        from emaprobe.experiments.bench_scan_cuda import run_cuda, run_grid

        if args.shape:
            check_shapes_fit(shapes, "cuda")
        if args.grid:
            run_grid(out_dir=args.out, shapes=shapes if args.shape else None, tag=args.tag, sweep=args.sweep,
                     resume=args.resume)
            return 0
        run_cuda(shapes if args.shape else None, out_dir=args.out, do_sweep=args.sweep,
                 peers=not args.no_peers, loop=not args.no_loop, warp=not args.no_warp, tag=args.tag)
        return 0
    check_shapes_fit(shapes, "cpu")
    run_cpu(shapes, repeats=7 if args.repeats is None else args.repeats, out_dir=args.out)
    return 0


def _ffn(args: argparse.Namespace) -> int:
    from emaprobe.experiments.bench_ffn import WIDTHS, run

    _check_out(args.out)
    run(tuple(args.width) if args.width else tuple(WIDTHS), tokens=args.tokens, repeats=args.repeats,
        device=args.device, out_dir=args.out, threads=args.threads)
    return 0


def _loss(args: argparse.Namespace) -> int:
    from emaprobe.experiments.bench_loss import run

    _check_out(args.out)
    run(tokens=args.tokens, vocab=args.vocab, width=args.width, device=args.device, repeats=args.repeats,
        out_dir=args.out)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from emaprobe.experiments.bench_compare import run

    _check_out(args.out)
    run(args.base, args.new, tuple(args.metric or ()), tuple(args.key) if args.key else None, out_dir=args.out,
        tag=args.tag)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: scan speed against the floor; the top-k FFN's three forms; the LM loss; LM training "
        "and generation; an A/B of their JSONs",
        description="Benchmarks that print their peer and the physical floor in the same run and write JSON.",
        epilog=EPILOG + "\nemaprobe bench lm --help: whole language models (training tokens/s and MFU, generation).\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bsub = p.add_subparsers(dest="bench", metavar="<benchmark>", required=True)
    s = bsub.add_parser(
        "scan",
        help="EMA / linear scan forward and backward",
        description="Time ema_traces (and the selective linear_scan) against scipy.signal.lfilter and a "
        "PyTorch step loop on CPU, or against the copy-bandwidth floor and kernel peers on CUDA. On CUDA the "
        "host time a call of the public ops is taken in 5 windows, each beside a gauge of the host's own "
        "speed: the fastest window is reported, with the median one. The public EMA forward+backward is timed "
        "beside the same kernels launched without autograd and beside autograd alone (a PyTorch x * 2), whose "
        "fixed cost per backward call is most of its host time.",
        epilog=SCAN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    s.add_argument("--shape", action="append", metavar="BxTxD", help="a shape to time; repeat for several")
    s.add_argument("--repeats", type=int, default=None,
                   help="CPU: timed runs per figure; the median is reported (default: 7). The CUDA benchmark "
                   "replays CUDA graphs its own number of times")
    s.add_argument("--out", default="runs/bench",
                   help="folder for the JSON (default: runs/bench; the committed figures need --out results/bench)")
    g = s.add_argument_group("CUDA only")
    g.add_argument("--sweep", action="store_true",
                   help="also time tile configurations, at each --shape (default: B16 T2048 D768 and B4 T8192 D768); "
                        "with --grid: at each shape where a forward cuts time into segments, its default plan with "
                        "one change each (depth, warps an SM, tile), checked against the default's output, and "
                        "the fastest plan per shape (a few minutes)")
    g.add_argument("--no-peers", action="store_true", help="skip accelerated-scan and flash-linear-attention")
    g.add_argument("--no-warp", action="store_true", help="skip accelerated-scan's warp kernel (slow first compile)")
    g.add_argument("--no-loop", action="store_true", help="skip the PyTorch step loop")
    g.add_argument("--grid", action="store_true",
                   help="instead: the EMA and selective forwards (graphed) against their floors over T 512-65536, "
                        "D 256-4096, B*T*D >= 2^24, beside a streaming kernel of the same bytes; writes "
                        "scan_grid_<card>.json (after each shape too) and .png (about a minute); with --shape "
                        "(and --tag) those shapes only")
    g.add_argument("--resume", action="store_true",
                   help="with --grid: where its JSON exists (a run cut off), keep the shapes it measured on this "
                        "card with the same --sweep, and measure only the rest; each kept row names its source")
    g.add_argument("--tag", help="a suffix for the file names, scan_cuda_<card>_<tag>.json (scan_grid_<card>_<tag> "
                                 "with --grid), so a run of one shape does not replace the default shapes' figures "
                                 "(letters, digits, - and _)")
    s.set_defaults(func=_scan)

    f = bsub.add_parser(
        "ffn",
        help="top-k FFN: the dense down projection against the gather and mask forms",
        description="Time topk_ffn (up projection, top-k, down projection) in each form: impl='dense' (scatter, "
        "full GEMM), impl='gather' (only the k kept columns of W2) and impl='mask' (the full GEMM on a code made "
        "in one pass, without topk and the scatter), forward and forward+backward, and print the speed-up of "
        "each form over dense. On CUDA also the selection alone: the mask kernel against topk + scatter and "
        "against its floor (the code's bytes at the card's copy bandwidth).",
        epilog=FFN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    f.add_argument("--width", action="append", choices=("130m", "small", "tiny"),
                   help="a width to time; repeat for several (default: all)")
    f.add_argument("--tokens", type=int, default=4096, help="tokens per call, B*T (default: 4096)")
    f.add_argument("--repeats", type=int, default=7, help="timed runs per figure; the median is reported (default: 7)")
    f.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is steadier on a shared box)")
    f.add_argument("--out", default="runs/bench", help="folder for the JSON (default: runs/bench)")
    f.set_defaults(func=_ffn)

    c = bsub.add_parser(
        "loss",
        help="the LM loss (token cross-entropy), alone and with the tied head: fused Triton passes against "
        "F.cross_entropy, eager and compiled",
        description="Time the token cross-entropy of bf16 logits (N, V) in each form of emaprobe.ops.cross_entropy: "
        "impl='fused' (two Triton passes over the logits in their dtype), impl='torch' (F.cross_entropy over a "
        "float32 copy) and that form under torch.compile; then the same forms of emaprobe.ops.linear_cross_entropy, "
        "the tied head (h (N, D) against the weight (V, D)) and the loss together, as training runs them. Forward "
        "and forward+backward, each against its floor (the fused passes' bytes at the card's copy bandwidth, and "
        "the head's products at its peak), after checking every form's loss and gradients against the torch form's.",
        epilog=LOSS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--device", choices=("cpu", "cuda"), default="cuda",
                   help="where to run (default: cuda; on cpu only the torch form runs)")
    c.add_argument("--tokens", type=int, default=16384, help="rows of logits, a step's B*T (default: 16384)")
    c.add_argument("--vocab", type=int, default=50257, help="the vocabulary, V (default: 50257, GPT-2's)")
    c.add_argument("--width", type=int, default=768, help="the head's input width, D (default: 768, the 130m models')")
    c.add_argument("--repeats", type=int, default=5, help="timed runs per figure on cpu (default: 5)")
    c.add_argument("--out", default="runs/bench", help="folder for the JSON (default: runs/bench)")
    c.set_defaults(func=_loss)

    k = bsub.add_parser(
        "compare",
        help="an A/B of any benchmark's JSONs: runs of the tree before against the tree after, row by row",
        description="Measure nothing: join runs of one benchmark on one card, the tree before (--base) and after "
        "(--new), match their rows, average each side's runs and report new / base per row and field.",
        epilog=COMPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    k.add_argument("--base", nargs="+", required=True, metavar="JSON", help="the runs before the change")
    k.add_argument("--new", nargs="+", required=True, metavar="JSON", help="the runs after it")
    k.add_argument("--metric", action="append", metavar="FIELD",
                   help="a float field to list row by row (and plot); repeat for several (default: a summary line "
                        "for every field, no rows)")
    k.add_argument("--key", action="append", metavar="FIELD",
                   help="a field rows are matched on; repeat for several (default: every non-float field)")
    k.add_argument("--out", default="runs/bench", help="folder for the JSON and PNG (default: runs/bench)")
    k.add_argument("--tag", help="a suffix for the file names (letters, digits, - and _)")
    k.set_defaults(func=_compare)

    m = bsub.add_parser(
        "lm",
        help="LM training tokens/s, MFU and memory; generation tokens/s",
        description="Time a full training step of SPEN (each mixer) and GPT at several lengths, eager and "
        "compiled, with MFU and peak memory; and greedy generation tokens/s after short and long prompts.",
        epilog=LM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("--config", action="append", metavar="NAME",
                   help="a named model config; repeat for several (default: spen-130m and gpt-124m)")
    m.add_argument("--mixers", metavar="A,B", help="SPEN mixers, comma-separated (default: every registered one)")
    m.add_argument("--seq-lens", type=_ints, metavar="T,T", help="training lengths (default: 1024,4096,16384)")
    m.add_argument("--tokens-per-step", type=int,
                   help="tokens per training step, B = this // T, so at least the longest T (default: 16384)")
    m.add_argument("--steps", type=int, help="timed training steps per repeat (default: 10)")
    m.add_argument("--warmup", type=int, help="untimed steps first, compiling included (default: 3)")
    m.add_argument("--repeats", type=int, help="timed repeats per figure; the median is reported (default: 3)")
    m.add_argument("--compile", choices=("both", "on", "off"),
                   help="eager rows, torch.compile rows, or both (default: both; off with --quick)")
    m.add_argument("--compile-mode", choices=("default", "reduce-overhead"),
                   help="torch.compile's mode for the compiled training rows, as `lm train --set "
                        "train.compile_mode=...` takes it: reduce-overhead also replays the step as CUDA graphs "
                        "(default: default)")
    m.add_argument("--gen-batch", type=_ints, metavar="B,B", help="generation batch sizes (default: 1,32)")
    m.add_argument("--gen-prompts", type=_ints, metavar="P,P", help="prompt lengths (default: 2048,32768)")
    m.add_argument("--gen-tokens", type=int, help="new tokens timed per generation repeat (default: 128)")
    m.add_argument("--no-train", action="store_true", help="skip the training rows")
    m.add_argument("--no-generate", action="store_true", help="skip the generation rows")
    m.add_argument("--trainer", action="store_true",
                   help="also run each training shape through train_lm (the loop of `emaprobe lm train`: host "
                        "batches, lr schedule, read-backs) and report its tokens/s beside the step's")
    m.add_argument("--profile", action="store_true",
                   help="also profile each training row's step after timing it: every kernel's time a step "
                        "(each op's CPU time on CPU), summed by kind (matmul, attention, Inductor, emaprobe, "
                        "optimizer...), the largest named, and on CUDA the time with no kernel running")
    m.add_argument("--quick", action="store_true",
                   help="tiny configs (spen-tiny, gpt-tiny), short lengths, one repeat, eager: the CPU smoke "
                        "(half a minute to two minutes on 2 CPU cores)")
    m.add_argument("--device", choices=("cpu", "cuda"), help="where to run (default: cuda when available)")
    m.add_argument("--peak-tflops", type=float,
                   help="peak FLOP/s for MFU, in TFLOP/s (default: the card's dense bf16 datasheet figure; none on CPU)")
    m.add_argument("--out", default="runs/bench",
                   help="folder for the JSON and PNG (default: runs/bench; committed figures need --out results/bench)")
    m.add_argument("--tag", help="a suffix for the file names, bench_lm_<card>_<tag>.json, so a run of part of the "
                                 "grid does not replace another's figures (letters, digits, - and _)")
    m.add_argument("--resume", action="store_true",
                   help="keep the rows already in the output JSON (same card, same settings) and measure the "
                        "rest: a grid longer than one sitting is the same command run again")
    m.add_argument("--merge", nargs="+", metavar="JSON",
                   help="measure nothing: join bench lm JSONs of one card (a grid run in parts) into "
                        "bench_lm_<card>_<tag>.json and .png (tag default: merged); a row in two files is an error")
    m.set_defaults(func=_lm)
