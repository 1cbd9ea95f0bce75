"""What experiments share: device choice, card names, seed statistics, figures, claim verdicts
and a pool that runs jobs in worker processes."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import io
import pickle
import re
import signal
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from emaprobe.utils import atomic_write_bytes, atomic_write_json


def mean_std_text(ms: dict, fmt: str, scale: float = 1.0) -> str:
    """``mean ± std`` of a ``{"mean", "std", "n"}`` summary over seeds (``probes.linear.mean_ci``), each
    times ``scale`` in format ``fmt``; the mean alone over one seed, where a spread is undefined."""
    mean = format(scale * ms["mean"], fmt)
    return mean if ms["n"] < 2 else f"{mean} ± {format(scale * ms['std'], fmt.lstrip('+'))}"


def t_half_width(std: float, n: int, level: float = 0.95) -> float:
    """Half the two-sided Student-t interval of a mean over ``n`` values of sample std ``std`` (ddof 1); NaN for
    one value. The interval every claim over seeds uses (not mean +- 2 standard errors, which covers 88% at 5)."""
    if n < 2:
        return float("nan")
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, n - 1) * std / n**0.5)


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when one is visible, else CPU; ``cuda`` without one is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device; use device=cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def _out_of_memory(err: BaseException) -> bool:
    """A CUDA allocation failure (PyTorch's, or cuBLAS's when it cannot make a handle)."""
    return isinstance(err, torch.OutOfMemoryError) or "CUBLAS_STATUS_ALLOC_FAILED" in str(err)


@contextlib.contextmanager
def errors_that_travel():
    """Inside a worker process: an exception that cannot be pickled (one holding a module, as some of
    ``torch.compile``'s do) would reach the parent as the pickling's own TypeError, its type, message and
    traceback lost. Such an exception is printed here, traceback and all, and raised again as a RuntimeError
    that names its type and message; any other goes as it is (an out-of-memory error keeps its type)."""
    try:
        yield
    except Exception as err:
        try:
            pickle.dumps(err)
        except Exception:  # noqa: BLE001 - any failure to pickle loses the error the same way
            traceback.print_exc()
            raise RuntimeError(f"{type(err).__name__}: {err}") from None
        raise


def run_pool(jobs: list, submit, record, limit: int, name=str) -> list[tuple]:
    """Runs ``jobs`` through ``submit`` (job -> future), at most ``limit`` at a time, and hands each
    result to ``record`` as it comes; ``name(job)`` names a job in messages.

    Out of memory: a run that fails for want of GPU memory while others may have shared the GPU
    goes back to the front of the queue (it resumes from its checkpoint), and from then on at most
    one fewer runs at a time, and never more than were still running: those fit. Any other failure,
    or running out of memory in a run that had the GPU to itself (started with nothing running and
    ``limit`` 1), is final: the others go on, and the failed (job, error) pairs are returned.

    SIGTERM or SIGINT (``timeout``, a scheduler, Ctrl-C; in the main thread): no job starts after it,
    and the pool waits for the running ones instead of leaving them behind. Workers in the same
    process group got the signal too: an LM training run writes a checkpoint at its step and
    stops (``TrainingInterrupted``), other work stops as its own signal handling says (an
    exception from a worker that died counts as a failure); a worker not signalled finishes its
    job. Then ``KeyboardInterrupt`` says how many runs stopped and how many never started. A
    second signal acts at once."""
    from emaprobe.train.lm import stop_requests

    queue, running, failed, stopped = collections.deque(jobs), {}, [], []
    with stop_requests(True) as stop:
        while queue or running:
            while queue and len(running) < limit and stop["signal"] is None:
                job = queue.popleft()
                running[submit(job)] = (job, not running and limit == 1)
            if not running:
                break
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                job, alone = running.pop(fut)
                try:
                    result = fut.result()
                except KeyboardInterrupt as err:  # a worker stopped by a signal (TrainingInterrupted: checkpointed)
                    stopped.append(job)
                    print(f"  stopped: {err}" if name(job) in str(err) else f"  stopped {name(job)}: {err}", flush=True)
                    continue
                except Exception as err:  # noqa: BLE001 - one run's failure must not stop the others
                    if _out_of_memory(err) and not alone:
                        limit = max(1, min(limit - 1, len(running)))
                        queue.appendleft(job)
                        print(f"  out of GPU memory: {name(job)} goes back in the "
                              f"queue; {limit} run{'s' if limit > 1 else ''} at a time from now on", flush=True)
                    else:
                        failed.append((job, err))
                        print(f"  FAILED {name(job)}: {type(err).__name__}: {err}", flush=True)
                    continue
                record(result)
    if stop["signal"] is not None or stopped:
        why = signal.Signals(stop["signal"]).name if stop["signal"] is not None else "a signal to the workers"
        raise KeyboardInterrupt(
            f"{why}: {len(stopped)} run{'s' if len(stopped) != 1 else ''} stopped, {len(queue)} not started, "
            f"{len(failed)} failed; finished runs are saved, and the same command goes on from here (a stopped run "
            "from its last checkpoint)")
    return failed


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bench_eager_ms(fn, warmup: int = 25, rep: int = 200) -> float:
    """Median milliseconds of ``fn`` launched from Python, back to back (CUDA; needs Triton)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """A function that runs ``fn()`` once and returns its seconds: CUDA events between
    synchronizations on a GPU, ``time.perf_counter`` on CPU."""
    if device.type == "cuda":
        def timed(fn):
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1e3
    else:
        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    return timed


def median_times(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 2) -> dict:
    """Median seconds of each ``fns[name]()`` over ``repeats`` runs after ``warmup`` untimed
    ones. The functions take turns, so a neighbour's load on a shared machine falls on each alike."""
    timed = _timer(device)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written: the
    floor the CUDA benchmarks set each kernel's bytes against."""
    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    # eager on purpose: inside a CUDA graph a copy can become a copy-engine node (slower,
    # 2.77 TB/s against 4.22 on the H200 here); take the faster of two copies, the stricter floor
    ms = min(bench_eager_ms(lambda: dst.copy_(src)), bench_eager_ms(lambda: torch.mul(src, 1.0, out=dst)))
    return 2 * nbytes / (ms * 1e-3)


# dense bf16 tensor-core peaks from NVIDIA's datasheets (no 2:4 sparsity); first match wins
PEAK_TFLOPS = (("h200", 989.0), ("h100 pcie", 756.0), ("h100", 989.0), ("a100", 312.0), ("l40s", 362.0))
PEAK_SOURCE = "NVIDIA datasheet, dense bf16 tensor cores (about 790 TFLOP/s is achievable in a bf16 matmul on an H200)"


def peak_flops(device: torch.device, override_tflops: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s, where the figure comes from); None on CPU or an unknown card."""
    if override_tflops is not None:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "none on CPU"
    name = torch.cuda.get_device_name(device).lower()
    for key, tflops in PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12, PEAK_SOURCE
    return None, f"unknown card {name!r}; pass --peak-tflops"


def card_slug(card: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3': the card's name in result file names."""
    return "-".join("".join(c if c.isalnum() else " " for c in card.lower()).split())


def check_tag(tag: str | None) -> None:
    """A benchmark's ``--tag`` becomes part of a file name: letters, digits, '-' and '_' only."""
    if tag is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", tag):
        raise ValueError(f"--tag {tag!r}: use letters, digits, '-' and '_' only (it becomes part of a file name)")


def probe_choice_lines(picks: dict[str, list[str]], where: dict[str, str] | None = None) -> list[str]:
    """README lines counting what the probe ``best`` (``probes.linear.fit_probe``) chose: in all, then per
    group of fits (a mechanism, a checkpoint), each with ``where[group]`` after its count when given."""
    n = sum(len(ps) for ps in picks.values())
    lb = sum(ps.count("lbfgs") for ps in picks.values())
    where = where or {}
    return ["", f"Probe `best` (`probes.linear`): L-BFGS was chosen in {lb} of {n} fits, LDA in the rest, each by "
            "its cross-entropy on a fifth of the training states held out from both fits."] + [
        f"- {name}: L-BFGS in {ps.count('lbfgs')} of {len(ps)}" + (f" ({where[name]})" if where.get(name) else "") + "."
        for name, ps in picks.items()]


def save_fig(fig, path: Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_paired(rows: list[tuple[str, list[float], float, float, float]], path: Path, title: str,
                band: float | None = None, unit: str = "nats/token") -> Path:
    """Differences paired by seed, one comparison a row: ``(label, values, mean, lo, hi)``, each seed's value a
    dot, and with two seeds or more the mean and its interval [lo, hi] as a bar; a line at 0 and, where
    ``band`` is given, the band |difference| < band shaded and labelled "the same loss" (a claim's
    no-difference tolerance)."""
    import numpy as np

    plt = pyplot()
    height = 1.0 + 0.75 * len(rows)
    fig, ax = plt.subplots(figsize=(6.8, height))
    if band is not None:
        ax.axvspan(-band, band, color="0.85", zorder=0, label=f'|difference| < {band} ("the same loss")')
    ax.axvline(0.0, color="0.3", lw=0.8)
    for y, (_, values, mean, lo, hi) in enumerate(reversed(rows)):
        jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
        ax.scatter(values, y + jitter, s=14, color="tab:blue", alpha=0.7, zorder=3,
                   label="one seed" if y == 0 else None)
        if len(values) > 1:
            ax.plot([lo, hi], [y - 0.3, y - 0.3], color="black", lw=2.5, zorder=4,
                    label="mean, 95% t-interval" if y == 0 else None)
            ax.plot([mean], [y - 0.3], marker="D", color="black", ms=5, zorder=5)
    ax.set_yticks(range(len(rows)), [label for label, *_ in reversed(rows)], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.5)
    ax.set_xlabel(f"difference, paired by seed ({unit}; below 0: the first is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    # the legend 0.75 inch under the axes (about 77% of the figure's height), below the axis label
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.75 / (0.77 * height)), ncol=3, frameon=False)
    return save_fig(fig, path)


def result_source(res: dict, name: str, *extra: str) -> dict:
    """Where a row of a result file ``name`` came from, kept in a resumed or merged result: the file, its
    git SHA, time and torch, and ``extra`` fields of ``res``."""
    return {"file": name, **{k: res.get(k) for k in ("git_sha", "time_utc", "torch", *extra)}}


def earlier_runs(old: dict) -> list[str]:
    """The git SHAs of the runs whose rows a result resumed from ``old`` keeps: those ``old`` was resumed
    from, then ``old``'s own."""
    return list(dict.fromkeys([*old.get("resumed_from", []), old.get("git_sha", "unknown")]))


def write_result(stem: Path, result: dict, draw) -> None:
    """A benchmark's ``stem``.json from ``result`` and ``stem``.png drawn by ``draw(path)``, each named
    as it is written."""
    print(f"wrote {atomic_write_json(stem.with_suffix('.json'), result)}")
    draw(stem.with_suffix(".png"))
    print(f"wrote {stem.with_suffix('.png')}")


def _set_item(key: str, value) -> str:
    """One ``--set`` as a shell reads it: a list of numbers comma-joined (``seeds=0,1``), any other list as
    quoted JSON, a scalar as Python prints it (quoted only where the shell would change it: a glob, a space,
    an empty value)."""
    import json
    import shlex

    if isinstance(value, (list, tuple)):
        numbers = value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        return f"--set {key}={','.join(map(str, value))}" if numbers else f"--set {key}='{json.dumps(list(value))}'"
    return f"--set {shlex.quote(f'{key}={value}')}"


def _flat_config(cfg) -> dict:
    """A config (dataclass or dict) as ``{dotted field: value}``, tuples as lists (as JSON gives them back)."""
    import dataclasses
    import json

    from emaprobe.utils.config import flatten_config

    as_dict = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    return flatten_config(json.loads(json.dumps(as_dict, default=str)))


def nearest_budget(name: str, cfg: dict) -> str:
    """The named budget of experiment ``name`` whose config differs from ``cfg`` in the fewest fields (the ones both
    have; ``default`` first on a tie): for results that record their config but not the budget it started from."""
    from emaprobe.experiments.protocol import budgets, get_experiment

    have = _flat_config(cfg)

    def distance(make) -> int:
        base = _flat_config(make())
        return sum(base[k] != have[k] for k in base.keys() & have.keys())

    table = budgets(get_experiment(name))
    order = ["default", *(b for b in table if b != "default")]
    return min(order, key=lambda b: distance(table[b]))


def command(name: str, out: Path | None, cfg: dict, budget: str | None = None) -> str:
    """The ``emaprobe run`` line that rebuilds ``cfg``: its budget (``cfg``'s own ``budget`` field, else ``budget``,
    else ``default``) plus a ``--set`` per field that differs from that budget's config (dotted where nested; a
    field the budget lacks is left out), then ``--out out`` unless ``out`` is None."""
    budget = cfg.get("budget") or budget or "default"
    from emaprobe.experiments.protocol import budgets, get_experiment

    table = budgets(get_experiment(name))
    base = _flat_config(table[budget]()) if budget in table else {}
    sets = [_set_item(k, v) for k, v in _flat_config(cfg).items() if k in base and base[k] != v]
    b = {"default": "", "smoke": " --smoke"}.get(budget, f" --budget {budget}")
    return " ".join([f"emaprobe run {name}{b}", *sets, *([f"--out {out}"] if out is not None else [])])


__all__ = ["command", "nearest_budget", "pick_device", "pyplot", "save_fig", "write_result"]
