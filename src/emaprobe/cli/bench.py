"""``emaprobe bench``: speed against peers and the physical floor, printed and saved as JSON."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  emaprobe bench scan                           CPU, default shapes, JSON to runs/bench
  emaprobe bench scan --shape 8x8192x256        the target shape only
  emaprobe bench scan --out results/bench       the committed CPU figures (on purpose only)
  emaprobe bench scan --device cuda --out results/bench
                                                Triton kernels against the copy-bandwidth floor
  emaprobe bench ffn                            top-k FFN, dense against gather, CPU
  emaprobe bench ffn --device cuda --width 130m the same on a GPU (bf16 autocast)
Output goes to runs/bench/ (ignored by git) unless --out names another folder.
Each figure is a median of repeats; the peers (scipy.signal.lfilter on CPU, the
PyTorch step loop, FFT convolution and kernel libraries on GPU) run in the same process.
"""


def _scan(args: argparse.Namespace) -> int:
    import torch

    from emaprobe.experiments.bench_scan import DEFAULT_SHAPES, parse_shape, run_cpu

    shapes = [parse_shape(s) for s in args.shape] if args.shape else list(DEFAULT_SHAPES)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible to torch")
        from emaprobe.experiments.bench_scan_cuda import run_cuda

        run_cuda(shapes if args.shape else None, out_dir=args.out, do_sweep=args.sweep,
                 peers=not args.no_peers, loop=not args.no_loop, warp=not args.no_warp)
        return 0
    run_cpu(shapes, repeats=args.repeats, out_dir=args.out)
    return 0


def _ffn(args: argparse.Namespace) -> int:
    from emaprobe.experiments.bench_ffn import WIDTHS, run

    run(tuple(args.width) if args.width else tuple(WIDTHS), tokens=args.tokens, repeats=args.repeats,
        device=args.device, out_dir=args.out, threads=args.threads)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: scan speed against peers and the floor; the top-k FFN's two forms",
        description="Benchmarks that print their peer and the physical floor in the same run and write JSON.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bsub = p.add_subparsers(dest="bench", metavar="<benchmark>", required=True)
    s = bsub.add_parser(
        "scan",
        help="EMA / linear scan forward and backward",
        description="Time ema_traces (and the selective linear_scan) against scipy.signal.lfilter and a "
        "PyTorch step loop on CPU, or against the copy-bandwidth floor and kernel peers on CUDA.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    s.add_argument("--shape", action="append", metavar="BxTxD", help="a shape to time; repeat for several")
    s.add_argument("--repeats", type=int, default=7, help="timed runs per figure; the median is reported")
    s.add_argument("--out", default="runs/bench",
                   help="folder for the JSON (default: runs/bench; the committed figures need --out results/bench)")
    g = s.add_argument_group("CUDA only")
    g.add_argument("--sweep", action="store_true", help="also time tile configurations at the headline shape")
    g.add_argument("--no-peers", action="store_true", help="skip accelerated-scan and flash-linear-attention")
    g.add_argument("--no-warp", action="store_true", help="skip accelerated-scan's warp kernel (slow first compile)")
    g.add_argument("--no-loop", action="store_true", help="skip the PyTorch step loop")
    s.set_defaults(func=_scan)

    f = bsub.add_parser(
        "ffn",
        help="top-k FFN: dense down projection against the gather form that skips the zeros",
        description="Time topk_ffn (up projection, top-k, down projection) with impl='dense' and impl='gather', "
        "forward and forward+backward, and print the speed-up of gather over dense.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    f.add_argument("--width", action="append", choices=("130m", "small", "tiny"),
                   help="a width to time; repeat for several (default: all)")
    f.add_argument("--tokens", type=int, default=4096, help="tokens per call, B*T (default: 4096)")
    f.add_argument("--repeats", type=int, default=7, help="timed runs per figure; the median is reported")
    f.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is steadier on a shared box)")
    f.add_argument("--out", default="runs/bench", help="folder for the JSON (default: runs/bench)")
    f.set_defaults(func=_ffn)
