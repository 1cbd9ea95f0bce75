"""Benchmark: the EMA scan against its peers, with the floor, in one run.

Command:   emaprobe bench scan --device cpu [--out results/bench]   (default --out runs/bench)
Hardware:  the CPU path is written for a small box (2 cores here); ``--device cuda``
           hands over to ``bench_scan_cuda`` (Triton kernels, copy-bandwidth floor).
Run time:  about a minute on 2 cores at the default shapes.
Expected:  ``ema_traces`` (chunked Toeplitz matmul, both cores) at or under 1.0x
           ``scipy.signal.lfilter`` doing the same work (one IIR filter per
           timescale, float32, single-threaded C loop); the PyTorch step loop is
           far behind. The target shape is B=8 T=8192 D=256 S=3 fp32.

Every figure is the median of ``--repeats`` timed runs after one warm-up.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import scipy.signal
import torch

from emaprobe.ops import DEFAULT_ALPHAS, ema_step, ema_traces, linear_scan
from emaprobe.utils import atomic_write_json, run_record

DEFAULT_SHAPES = ((8, 8192, 256), (16, 2048, 768), (1, 65536, 64))


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        B, T, D = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise ValueError(f"--shape must look like BxTxD (e.g. 8x8192x256), got {text!r}") from err
    if min(B, T, D) < 1:
        raise ValueError(f"--shape needs positive sizes, got {text!r}")
    return B, T, D


def memory_bytes(device: str = "cpu") -> int | None:
    """The whole memory of ``device`` in bytes (the host's RAM for cpu); None where it cannot be read."""
    if device == "cuda":
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_shapes_fit(shapes, device: str = "cpu", n_scales: int = len(DEFAULT_ALPHAS)) -> None:
    """Refuse, before any shape is timed, one whose float32 input and its ``n_scales`` traces alone outgrow the
    device's memory (a run holds several such tensors at once, so a shape that passes may still run out:
    ``out_of_memory_named`` turns that into an error naming it)."""
    total = memory_bytes(device)
    for B, T, D in shapes:
        need = 4 * B * T * D * (1 + n_scales)
        if total is not None and need > total:
            raise ValueError(f"--shape {B}x{T}x{D} cannot fit: its float32 input and {n_scales} traces alone take "
                             f"{need / 2**30:,.1f} GiB, more than the {total / 2**30:,.1f} GiB of {device} memory; "
                             "give a smaller shape")


@contextlib.contextmanager
def out_of_memory_named(shape) -> Iterator[None]:
    """A failed allocation while ``shape`` is timed becomes a one-line ValueError that names the shape."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:  # torch.OutOfMemoryError is a RuntimeError
        text = str(err).strip()
        if not isinstance(err, MemoryError) and "out of memory" not in text and "can't allocate memory" not in text:
            raise
        B, T, D = shape
        first = text.splitlines()[0] if text else type(err).__name__
        raise ValueError(f"--shape {B}x{T}x{D} ran out of memory ({first}); give a smaller shape") from err


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocator, thread pool, first-touch pages
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _lfilter_all(x: np.ndarray, alphas: tuple[float, ...]) -> list[np.ndarray]:
    # float32 coefficients keep scipy in float32, the same precision as ours
    return [
        scipy.signal.lfilter(np.array([a], np.float32), np.array([1.0, a - 1.0], np.float32), x, axis=1)
        for a in alphas
    ]


def _step_loop(x: torch.Tensor, alphas: tuple[float, ...]) -> torch.Tensor:
    h = None
    out = torch.empty(x.shape[0], x.shape[1], len(alphas), x.shape[2])
    for t in range(x.shape[1]):
        h = ema_step(x[:, t], h, alphas)
        out[:, t] = h
    return out


def bench_cpu_shape(shape, alphas, repeats: int, loop_max_tokens: int) -> dict:
    B, T, D = shape
    S = len(alphas)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, D, generator=gen)
    xn = x.numpy()
    row: dict = {"B": B, "T": T, "D": D, "S": S, "dtype": "float32"}
    with torch.no_grad():
        row["ours_fwd_s"] = median_time(lambda: ema_traces(x, alphas, backend="torch"), repeats)
    row["lfilter_s"] = median_time(lambda: _lfilter_all(xn, alphas), repeats)
    xg = x.clone().requires_grad_()
    grad = torch.randn(B, T, S, D, generator=gen)
    row["ours_fwd_bwd_s"] = median_time(
        lambda: torch.autograd.grad(ema_traces(xg, alphas, backend="torch"), xg, grad), max(1, repeats // 2)
    )
    a = torch.rand(B, T, D, generator=gen)
    with torch.no_grad():
        row["selective_scan_fwd_s"] = median_time(lambda: linear_scan(a, x, backend="torch"), max(1, repeats // 2))
    if B * T <= loop_max_tokens:
        with torch.no_grad():
            row["torch_step_loop_s"] = median_time(lambda: _step_loop(x, alphas), 1)
    else:
        row["torch_step_loop_s"] = None
    row["ours_over_lfilter"] = row["ours_fwd_s"] / row["lfilter_s"]
    # what streaming the bytes once would cost: read x, write S traces (float32)
    row["bytes_moved"] = 4 * B * T * D * (1 + S)
    row["ours_GBps"] = row["bytes_moved"] / row["ours_fwd_s"] / 1e9
    return row


def format_table(rows: list[dict]) -> str:
    head = f"{'B x T x D (S)':<22}{'ours fwd':>10}{'lfilter':>10}{'ours/lfilter':>14}{'fwd+bwd':>10}{'selective':>11}{'step loop':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        loop = f"{r['torch_step_loop_s'] * 1e3:9.0f}ms" if r["torch_step_loop_s"] else f"{'(skipped)':>11}"
        lines.append(
            f"{r['B']}x{r['T']}x{r['D']} ({r['S']})".ljust(22)
            + f"{r['ours_fwd_s'] * 1e3:8.1f}ms{r['lfilter_s'] * 1e3:8.1f}ms{r['ours_over_lfilter']:13.2f}x"
            + f"{r['ours_fwd_bwd_s'] * 1e3:8.1f}ms{r['selective_scan_fwd_s'] * 1e3:9.1f}ms"
            + loop
        )
    return "\n".join(lines)


def run_cpu(shapes, alphas=DEFAULT_ALPHAS, repeats: int = 7, out_dir: str | Path | None = None, loop_max_tokens: int = 70_000) -> dict:
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    rows = []
    for shape in shapes:
        with out_of_memory_named(shape):
            rows.append(bench_cpu_shape(shape, tuple(alphas), repeats, loop_max_tokens))
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    table = format_table(rows)
    print()
    print(f"EMA scan, CPU, {torch.get_num_threads()} torch threads, median of {repeats} (float32; lfilter is single-threaded)")
    print(table)
    result = run_record(
        device="cpu",
        benchmark="scan-cpu",
        alphas=list(alphas),
        repeats=repeats,
        torch_threads=torch.get_num_threads(),
        scipy=scipy.__version__,
        rows=rows,
    )
    if out_dir is not None:
        path = atomic_write_json(Path(out_dir) / "scan_cpu.json", result)
        print(f"wrote {path}")
    return result
