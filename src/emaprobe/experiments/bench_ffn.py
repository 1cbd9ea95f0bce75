"""Benchmark: the top-k FFN's forms (dense, gather, mask) side by side, in one run.

Command:   emaprobe bench ffn [--device cuda] [--tokens 4096] [--threads 1] [--out runs/bench]
Hardware:  written for a small CPU box (2 cores here) and for one CUDA GPU. On a CPU that
           other jobs share, ``--threads 1`` gives steadier figures.
Run time:  about a minute on 2 cores at the default widths.
Expected:  on CPU the gather form (``F.embedding_bag`` over the k kept columns of W2)
           beats the dense one (scatter into d_ff, full GEMM) forward, where it skips
           d_ff - k of every d_ff multiply-adds of the down projection; forward+backward
           gains less, as the up projection W1 c and its gradients stay dense. On CUDA the
           dense GEMM runs on tensor cores and is expected to hold on, and the mask form
           (the same GEMM on a code made in one Triton pass, without ``torch.topk`` and the
           scatter) to beat it; the run says.

What is timed is the whole ``topk_ffn(c, W1, W2, k)`` (up projection, activation, top-k,
down projection), forward alone and forward+backward with gradients to c, W1 and W2, at
N = ``--tokens`` tokens, k = ``active_units(0.06, d_ff)``. CPU runs float32; CUDA runs
float32 weights under bf16 autocast, as training does. Each figure is the median of
``--repeats`` timed runs after warm-up, the forms taking turns; on CUDA each run is
timed with CUDA events between synchronizations. Speed-ups are dense's time over each form's.

On CUDA the selection alone is timed too, on a bf16 (N, d_ff) code with the relu inside, as the
mask form runs it: ``topk_mask`` (the Triton kernel) against its peer, the dense form's relu,
``torch.topk`` and scatter, and against its floor, the code's bytes read and written (4 N d_ff)
at the card's copy bandwidth; medians of back-to-back calls (``triton.testing.do_bench``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from emaprobe.experiments.common import bench_eager_ms, card_slug, copy_bandwidth, median_times
from emaprobe.layers import active_units
from emaprobe.ops import FFN_IMPLS, topk_ffn
from emaprobe.ops.sparse_ffn import topk_code, topk_mask
from emaprobe.utils import atomic_write_json, run_record

# name -> (d_in, d_ff, d_out); "130m" is the 130M model's width, "small" and "tiny" spen-small's and spen-tiny's
WIDTHS: dict[str, tuple[int, int, int]] = {
    "130m": (768, 3072, 768),
    "small": (384, 1536, 384),
    "tiny": (128, 512, 128),
}
IMPLS = tuple(FFN_IMPLS)  # every form takes relu, the activation timed


def bench_width(name: str, tokens: int, repeats: int, device: torch.device, fraction: float = 0.06) -> dict:
    d_in, d_ff, d_out = WIDTHS[name]
    k = active_units(fraction, d_ff)
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(tokens, d_in, generator=gen).to(device).requires_grad_()
    w_up = (torch.randn(d_ff, d_in, generator=gen) / d_in**0.5).to(device).requires_grad_()
    w_down = (torch.randn(d_out, d_ff, generator=gen) / d_ff**0.5).to(device).requires_grad_()
    on_gpu = device.type == "cuda"
    gy = torch.randn(tokens, d_out, generator=gen).to(device, torch.bfloat16 if on_gpu else torch.float32)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu)
    row: dict = {"width": name, "N": tokens, "d_in": d_in, "d_ff": d_ff, "d_out": d_out, "k": k,
                 "dtype": "bf16-autocast" if on_gpu else "float32"}

    def fwd(impl):
        with torch.no_grad(), autocast:
            return topk_ffn(c, w_up, w_down, k, "relu", impl)

    def fwd_bwd(impl):
        with autocast:
            y = topk_ffn(c, w_up, w_down, k, "relu", impl)
        return torch.autograd.grad(y, (c, w_up, w_down), gy)

    for what, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        got = median_times({impl: functools.partial(fn, impl) for impl in IMPLS}, repeats, device)
        row.update({f"{impl}_{what}_s": t for impl, t in got.items()})
        for impl in (i for i in IMPLS if i != "dense"):
            row[f"{impl}_{what}_speedup"] = row[f"dense_{what}_s"] / row[f"{impl}_{what}_s"]
    return row


def bench_selection(row: dict, bw: float, device: torch.device) -> None:
    """Add the CUDA selection figures to ``row``: ``select_<name>_s`` for the mask kernel and
    its peer, ``select_floor_s`` (4 N d_ff bytes at ``bw`` bytes/s) and each one's ratio to it."""
    n, d_ff, k = row["N"], row["d_ff"], row["k"]
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(n, d_ff, generator=gen).to(device, torch.bfloat16)

    def topk_scatter():
        vals, idx = topk_code(torch.relu(a), k)
        return torch.zeros_like(a).scatter(-1, idx, vals)

    # the same values kept in every row (which of several tied units is kept may differ)
    if not torch.equal(topk_mask(a, k, relu=True).sort(-1).values, topk_scatter().sort(-1).values):
        raise RuntimeError(f"topk_mask and topk + scatter keep different values at {row['width']}")
    row["select_floor_s"] = 4 * n * d_ff / bw
    for name, fn in (("mask", lambda: topk_mask(a, k, relu=True)), ("topk_scatter", topk_scatter)):
        row[f"select_{name}_s"] = bench_eager_ms(fn) / 1e3
        row[f"select_{name}_x_floor"] = row[f"select_{name}_s"] / row["select_floor_s"]


def format_selection(rows: list[dict]) -> str:
    lines = [f"{'width (N x d_ff, k)':<30}{'mask kernel':>22}{'topk + scatter':>22}{'floor':>12}"]
    for r in rows:
        cells = [f"{r[f'select_{n}_s'] * 1e3:.3f}ms {r[f'select_{n}_x_floor']:.2f}x" for n in ("mask", "topk_scatter")]
        lines.append(f"{r['width'] + ' (' + str(r['N']) + ' x ' + str(r['d_ff']) + ', ' + str(r['k']) + ')':<30}"
                     f"{cells[0]:>22}{cells[1]:>22}{r['select_floor_s'] * 1e3:>10.3f}ms")
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    cols = [(f"{impl} {label}", f"{impl}_{what}_s", f"{impl}_{what}_speedup")
            for what, label in (("fwd", "fwd"), ("fwd_bwd", "f+b")) for impl in IMPLS]
    head = f"{'width (d_in-d_ff-d_out, k)':<30}" + "".join(f"{name:>18}" for name, _, _ in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        label = f"{r['width']} ({r['d_in']}-{r['d_ff']}-{r['d_out']}, {r['k']})"
        cells = []
        for _, key, up in cols:
            cell = f"{r[key] * 1e3:.2f}ms" + (f" {r[up]:.2f}x" if up in r else "")
            cells.append(f"{cell:>18}")
        lines.append(f"{label:<30}" + "".join(cells))
    return "\n".join(lines)


def run(widths=tuple(WIDTHS), tokens: int = 4096, repeats: int = 7, device: str = "cpu",
        out_dir: str | Path | None = "runs/bench", threads: int | None = None) -> dict:
    """Time every width in ``widths``, print the table and write ``ffn_<device>.json`` to
    ``out_dir`` (None: no file). ``threads`` sets torch's CPU threads (default: torch's own)."""
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if tokens < 1:
        raise ValueError(f"--tokens must be >= 1, got {tokens}")
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return _run(widths, tokens, repeats, torch.device(device), out_dir)
    finally:
        torch.set_num_threads(before)


def _run(widths, tokens: int, repeats: int, dev: torch.device, out_dir) -> dict:
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch")
    unknown = sorted(set(widths) - set(WIDTHS))
    if unknown:
        raise ValueError(f"unknown width(s) {unknown}; choose from {sorted(WIDTHS)}")
    on_gpu = dev.type == "cuda"
    bw = copy_bandwidth() if on_gpu else None
    rows = []
    for name in widths:
        rows.append(bench_width(name, tokens, repeats, dev))
        if on_gpu:
            bench_selection(rows[-1], bw, dev)
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    card = torch.cuda.get_device_name(dev) if on_gpu else "cpu"
    where = card if on_gpu else f"CPU, {torch.get_num_threads()} torch threads"
    print()
    print(f"top-k FFN (k = ceil(0.06 d_ff)), N = {tokens} tokens, {where}, median of {repeats}; "
          f"speed-up = dense's time / the form's")
    print(format_table(rows))
    if on_gpu:
        print(f"\nthe selection alone (bf16 code, relu inside), median of back-to-back calls; x = time over "
              f"the floor, 4 N d_ff bytes at the copy bandwidth ({bw / 1e12:.2f} TB/s):")
        print(format_selection(rows))
    result = run_record(
        device=dev,
        benchmark=f"ffn-{dev.type}",
        card=card,
        tokens=tokens,
        repeats=repeats,
        torch_threads=torch.get_num_threads(),
        **({"copy_bandwidth_Bps": bw} if on_gpu else {}),
        rows=rows,
    )
    if out_dir is not None:
        path = atomic_write_json(Path(out_dir) / f"ffn_{card_slug(card)}.json", result)
        print(f"wrote {path}")
    return result
