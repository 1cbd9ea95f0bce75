"""MQAR recall per mechanism (Zoology protocol): which context mixers can look content up?

Zoology (Arora et al. 2023, arXiv 2312.04927) found that attention solves
multi-query associative recall at every width, that input-dependent matrix-state
mixers (Based, GLA-class) close most of the gap, and that gated convolutions with
fixed (input-independent) filters need a width that grows with the number of pairs.
Here a 2-layer model (``probes.recall.RecallModel``: embeddings + positions, per
block a short causal conv, the mixer, W_o, an MLP) is trained per mixer on MQAR
(``tasks.mqar``) for every cell of a grid over sequence length T, number of
key-value pairs N and width D, at several learning rates; each cell reports its best lr,
as Zoology does, but chosen here by the training loss of the last tenth of steps
(``probes.recall.best_lr_run``), which is taken on fresh sequences before each update,
not by the test accuracy that is then reported (Zoology's choice, which lifts the
chosen run's figure by the maximum of its noise). Claim ``selection_fixes_recall``: at ``claim_cell``, with
``seeds`` seeds at each mixer's best lr, does an input-dependent mixer (gla or
selective, whichever trained to the lower loss there: chosen, as the lrs are, without
the test draw) beat fixed EMA's accuracy, CI above zero?

Command:   emaprobe run probe_mqar --budget cpu --out results/probes/probe_mqar
           emaprobe run probe_mqar --budget cpu_long --out results/probes/probe_mqar_cpu_long
           emaprobe run probe_mqar --budget gpu --out results/probes/probe_mqar_gpu   (H200)
           emaprobe run probe_mqar --smoke                                            (seconds; CI)
Budgets:   cpu_long  the claim cell T=64, N=4, D=64 alone, ema, learned_ema, selective and gla, 4000
                steps, lr 3e-3, 3 seeds, 2 processes: does 4x the 1000 steps that left gla part way
                get it there?
           cpu  V=64, T {64, 128}, N {4, 8}, D {64}, lr {3e-3, 1e-2}, 300 steps x 32 sequences:
                far short of Zoology's training (millions of sequences): read it as the start of
                learning. The committed run (results/probes/probe_mqar) took 46 minutes on 2 busy
                shared cores before it was stopped; its resume (`--set parallel=2`) added the last
                cell (T=128, N=8) in 3 minutes, where only attention rose above chance (0.33).
           Measured, claim cell T=64 N=4 D=64, 3 seeds at the best lr (chance 0.031):
                300 steps:  ema 0.034, learned_ema 0.034, selective 0.049, gla 0.194 ± 0.136,
                            attention 0.293 (results/probes/probe_mqar)
                1000 steps: see results/probes/probe_mqar_long{,_attention,_selective}
                4000 steps (cpu_long, 22 min): gla 0.993 ± 0.005, selective 0.286 ± 0.003, ema
                            0.267 ± 0.016, learned_ema 0.265 ± 0.009
                            (results/probes/probe_mqar_cpu_long)
           gpu_long  the gpu claim cell alone (T=256, N=64, D=256), 4000 steps x 256, lr 1e-3, ema,
                selective and gla, 3 seeds: do the recurrent mixers reach it with 4x the training?
                On the H200 (c347530, 1020 s): gla 0.996 ± 0.006, selective 0.013, ema 0.010
                (results/probes/probe_mqar_gpu_long): gla does; the vector states do not.
           gpu  V=8192, T {64, 256, 1024}, N {4, 16, 64, 256 where T >= 3N}, D {64, 256},
                lr {1e-3, 3.2e-3}, 1000 steps x 256: 9 cells x 2 widths x 2 lrs x 5 mixers = 180
                runs, plus 2 seeds x 5 at the claim cell (T=256, N=64, D=256), 12 at a time
                (``parallel``: one process each, on an H200's 16 cores; batches are drawn on the GPU
                and the loss read back every 100 steps). On the H200 (2d3e6fd, 76d183e) twelve at
                once share the GPU by time-slicing: the first 86 runs (T 64 and most of 256) took
                1740 s (`results/probes/probe_mqar_gpu/mqar.json`); the 104 left, 80 of them at
                T=1024, are more than one session's device time, so the grid runs over several
                sessions, each resuming the last: `mqar.json` is committed, and a run whose `--out`
                holds it goes on from it. Why not the first plan (3000 steps x 64, three lrs), and
                what comes next: `notes/probes.md`. At T=1024 and D=256 a run holds up to about
                20 GB: 8 or 12 at once fill the card, so a run that runs out of GPU memory goes
                back in the queue and fewer run at once from then on (``run_pool``).
Order:     the claim cell's lr grid, then its extra seeds at each mixer's best lr beside the rest
           of the grid, so a run stopped early still has the claim (with one lr, all at once).
Writes:    OUT/mqar.json (grid rows: cell, lr, accuracy, loss, seconds; claim-cell seeds), written
           after every run, so a stopped run keeps its rows and a rerun of the same config
           (``parallel``, ``gla_backend`` and ``compile`` may differ: rows say how they ran) skips them;
           ``emaprobe run`` refuses another config's OUT before anything is written (``--overwrite``
           replaces it; ``run`` called directly starts such a folder afresh);
           OUT/partial/*.pt, a checkpoint per unfinished run, saved every 100 steps: a run stopped
           part way (a timeout, a lost machine) goes on from its last check, and its file is
           deleted once its row is in mqar.json (git ignores the folder);
           OUT/README.md, OUT/mqar_heatmap.png, OUT/mqar_curves.png (the claim cell's training
           loss, from rows that keep their ``loss_curve``), OUT/claims.json.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emaprobe.experiments.common import (command, earlier_runs, errors_that_travel, pick_device, pyplot, run_pool,
                                         save_fig)
from emaprobe.experiments.protocol import Claim, config_diff, verdict_from_interval, write_claims
from emaprobe.layers import mixer_class
from emaprobe.ops import available_gla_backends, resolve_gla_backend
from emaprobe.probes.linear import mean_ci
from emaprobe.probes.recall import RecallModel, RecallModelConfig, best_lr_run, choice_loss, train_recall
from emaprobe.tasks.mqar import MQARConfig
from emaprobe.utils import atomic_write_json, atomic_write_text, read_json, run_record

NAME = "probe_mqar"
RESULT = "mqar.json"
PARTIAL = "partial"  # OUT/partial/: checkpoints of runs not yet finished
# config fields that say how runs execute, not what they measure: a resume, and protocol.check_out's comparison
# of an --out's mqar.json with a config, leave them out
EXECUTION_FIELDS = ("parallel", "gla_backend", "compile")
SELECTIVE = ("gla", "selective")  # the input-dependent mechanisms of the claim


@dataclass(frozen=True)
class Config:
    mixers: tuple[str, ...] = ("ema", "learned_ema", "selective", "gla", "attention")
    vocab: int = 64
    seq_lens: tuple[int, ...] = (64, 128)
    pairs: tuple[int, ...] = (4, 8)
    widths: tuple[int, ...] = (64,)
    lrs: tuple[float, ...] = (3e-3, 1e-2)
    steps: int = 300
    batch: int = 32
    n_test: int = 256
    key_dim: int = 16
    rank: int = 16
    short_conv: int = 3
    seeds: int = 3  # at the claim cell
    claim_cell: tuple[int, int, int] = (64, 4, 64)  # (T, N, D)
    device: str = "auto"
    parallel: int = 1  # runs at a time, each in its own process (small models leave a GPU mostly idle)
    gla_backend: str = "auto"  # gla's kernel (ops.gla: auto, torch, naive, or one registered); recorded in each gla row
    compile: bool = False  # train through torch.compile(model); recorded in each row
    budget: str = "default"

    def __post_init__(self):
        if len(self.claim_cell) != 3:
            raise ValueError(f"claim_cell must be (T, N, D), three sizes, got {self.claim_cell}")
        T, N, D = self.claim_cell
        if T not in self.seq_lens or N not in self.pairs or D not in self.widths:
            raise ValueError(f"claim_cell {self.claim_cell} must be a cell of the grid "
                             f"(seq_lens {self.seq_lens}, pairs {self.pairs}, widths {self.widths})")
        if self.seeds < 1 or self.steps < 1 or self.parallel < 1:
            raise ValueError("seeds, steps and parallel must be >= 1")
        for name in ("batch", "n_test", "key_dim", "rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.short_conv < 0:
            raise ValueError(f"short_conv must be >= 0 (0: no conv), got {self.short_conv}")
        if self.vocab < 8 or self.vocab % 2:
            raise ValueError(f"vocab must be even and >= 8 (MQAR's keys and values split it in halves), "
                             f"got {self.vocab}")
        MQARConfig(self.vocab, T, N)  # the claim cell runs even where cells() drops it: its pairs must fit now
        if not self.lrs or not all(math.isfinite(lr) and lr > 0 for lr in self.lrs):
            raise ValueError(f"lrs must hold finite learning rates > 0, at least one; got {self.lrs}")
        if not self.mixers or len(set(self.mixers)) != len(self.mixers):
            raise ValueError(f"mixers must be distinct mixer names, at least one; got {self.mixers}")
        for m in self.mixers:  # before any training: a typo at the end of the list fails now, not hours in
            mixer_class(m)
        if self.gla_backend not in available_gla_backends():
            raise ValueError(f"unknown gla_backend {self.gla_backend!r}; choose one of {available_gla_backends()}")

    def cells(self) -> list[tuple[int, int, int]]:
        """(T, N, D) cells whose pairs fit: keys need N <= V/2 - 1 and T >= 3N."""
        return [(T, N, D) for T in self.seq_lens for N in self.pairs for D in self.widths
                if N <= self.vocab // 2 - 1 and T >= 3 * N]


def smoke() -> Config:
    return Config(mixers=("ema", "selective"), vocab=16, seq_lens=(24,), pairs=(2,), widths=(16,), lrs=(1e-2,),
                  steps=3, batch=4, n_test=8, seeds=2, claim_cell=(24, 2, 16), budget="smoke")


def cpu() -> Config:
    return Config(budget="cpu")


def gpu() -> Config:
    return Config(vocab=8192, seq_lens=(64, 256, 1024), pairs=(4, 16, 64, 256), widths=(64, 256),
                  lrs=(1e-3, 3.2e-3), steps=1000, batch=256, n_test=1000, key_dim=64, rank=32,
                  claim_cell=(256, 64, 256), parallel=12, budget="gpu")


def cpu_long() -> Config:
    """The cpu claim cell alone at one lr (3e-3, fixed before the cpu grid finished), the fixed and
    learned decays against the two input-dependent mixers, 4000 steps: at 1000, gla was still
    learning (0.84, 0.64 and 0.29 over 3 seeds), as on the GPU cell, where 4000 steps took it from
    0.008 to 0.996. Attention, solved at 1000 steps (0.989), is left out."""
    return Config(mixers=("ema", "learned_ema", "selective", "gla"), seq_lens=(64,), pairs=(4,), widths=(64,),
                  lrs=(3e-3,), steps=4000, parallel=2, budget="cpu_long")


def gpu_long() -> Config:
    """The H200 claim cell alone, 4x the steps, ema against the two input-dependent mixers, lr 1e-3
    (gla's and selective's best there at 1000 steps; ema scores 0.001 at both), 3 seeds: is the
    claim cell out of reach of the recurrent mixers, or only of 1000 steps?"""
    return dataclasses.replace(gpu(), mixers=("ema", "selective", "gla"), seq_lens=(256,), pairs=(64,), widths=(256,),
                               lrs=(1e-3,), steps=4000, parallel=9, budget="gpu_long")


BUDGETS = {"cpu": cpu, "cpu_long": cpu_long, "gpu": gpu, "gpu_long": gpu_long}


def _partial(out: Path, mixer: str, cell, lr: float, seed: int) -> Path:
    """Where a run keeps its checkpoint until its row is saved (``train_recall``'s ``checkpoint``)."""
    T, N, D = cell
    return out / PARTIAL / f"{mixer}_T{T}_N{N}_D{D}_lr{lr:g}_seed{seed}.pt"


def _one(cfg: Config, mixer: str, cell, lr: float, seed: int, dev, out: Path) -> dict:
    T, N, D = cell
    if cfg.compile:  # a fresh model, often of another mixer class: the last run's compiled graphs would
        torch._dynamo.reset()  # pile up to dynamo's recompile limit, past which the model runs eager
    torch.manual_seed(seed)
    mc = RecallModelConfig(mixer=mixer, d_model=D, vocab=cfg.vocab, seq_len=T, key_dim=cfg.key_dim, rank=cfg.rank,
                           short_conv=cfg.short_conv, gla_backend=cfg.gla_backend)
    model = RecallModel(mc)
    r = train_recall(model, MQARConfig(cfg.vocab, T, N), cfg.steps, lr, seed, batch=cfg.batch, n_test=cfg.n_test,
                     device=dev, checkpoint=_partial(out, mixer, cell, lr, seed), compile=cfg.compile)
    r["compiled"] = cfg.compile
    if mixer == "gla":  # which GLA kernel ran: the PyTorch chunked form, or a registered CUDA one
        r["gla_backend"] = resolve_gla_backend(cfg.gla_backend, torch.device(dev))
    return {"mixer": mixer, "seq_len": T, "pairs": N, "width": D, "lr": lr, "seed": seed, **r}


def _key(r: dict) -> tuple:
    return (r["mixer"], r["seq_len"], r["pairs"], r["width"], r["lr"], r["seed"])


def _one_in_subprocess(cfg: Config, mixer: str, cell, lr: float, seed: int, out: Path) -> dict:
    torch.set_num_threads(1)  # the parent's cores are shared by `parallel` workers
    try:
        with errors_that_travel():
            return _one(cfg, mixer, cell, lr, seed, pick_device(cfg.device), out)
    finally:  # a worker outlives its run: give the memory it cached back to the other workers' runs
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _job_name(job: tuple) -> str:
    mixer, (T, N, D), lr, seed = job
    return f"{mixer} T={T} N={N} D={D} lr={lr:g} seed {seed}"


def run(cfg: Config, out: Path) -> None:
    """The claim cell's lr grid first, then its seeds at each mixer's best lr beside the rest
    of the grid, ``parallel`` runs at a time; every finished run is saved at once."""
    out = Path(out)
    dev = pick_device(cfg.device)
    path = out / RESULT
    rows: list[dict] = []
    earlier: list[str] = []  # the commits of the runs this one resumes
    t0 = time.perf_counter()
    resumed = False
    if path.is_file():  # resume: keep rows measured under the same config (how they ran aside)
        old = read_json(path)
        # the rule protocol.check_out applies before `emaprobe run` calls this, so a config it lets through resumes
        resumed = not config_diff(old.get("config", {}), dataclasses.asdict(cfg), EXECUTION_FIELDS)
        if resumed:
            rows = old["rows"]
            earlier = earlier_runs(old)
            t0 -= old.get("wall_seconds", 0)  # wall seconds add up across resumes
    done = {_key(r) for r in rows}

    def save():
        atomic_write_json(path, run_record(experiment=NAME, config=dataclasses.asdict(cfg), rows=rows,
                                           torch_threads=torch.get_num_threads(), resumed_from=earlier,
                                           wall_seconds=round(time.perf_counter() - t0, 1)))

    def execute(jobs: list[tuple]) -> None:
        jobs = [j for j in jobs if (j[0], *j[1], j[2], j[3]) not in done]
        if not jobs:
            return

        def record(r: dict) -> None:
            rows.append(r)
            done.add(_key(r))
            save()
            _partial(out, r["mixer"], _cell(r), r["lr"], r["seed"]).unlink(missing_ok=True)  # the row is safe
            print(f"  {r['mixer']:<12} T={r['seq_len']} N={r['pairs']} D={r['width']} lr={r['lr']:g} seed {r['seed']}: "
                  f"acc {r['accuracy']:.3f} ({r['seconds']} s"
                  + (f", resumed at step {r['resumed_at']}" if r.get("resumed_at") else "")
                  + f"; {len(done)} runs, {time.perf_counter() - t0:.0f} s)",
                  flush=True)

        if cfg.parallel == 1 or len(jobs) == 1:
            for mixer, cell, lr, seed in jobs:
                record(_one(cfg, mixer, cell, lr, seed, dev, out))
            return
        ctx = mp.get_context("spawn")  # CUDA cannot be forked
        with cf.ProcessPoolExecutor(max_workers=min(cfg.parallel, len(jobs)), mp_context=ctx) as pool:
            failed = run_pool(jobs, lambda j: pool.submit(_one_in_subprocess, cfg, *j, out), record, cfg.parallel,
                              name=_job_name)
        if failed:
            lines = [f"{_job_name(job)}: {type(err).__name__}: {err}" for job, err in failed]
            raise RuntimeError(
                f"{len(failed)} of {len(jobs)} runs failed (the other runs' rows are saved in {path}):\n  "
                + "\n  ".join(lines) + "\nRerun the same command to go on: saved rows are skipped and each failed "
                "run resumes from its checkpoint.")

    if not resumed:  # a fresh start or another config: unfinished runs under the old one cannot go on
        for stale in (out / PARTIAL).glob("*.pt"):
            stale.unlink()
    save()  # the config is on disk before any checkpoint is, so a rerun can tell whose they are
    claim = tuple(cfg.claim_cell)
    grid = [(m, cell, lr, 0) for cell in cfg.cells() if cell != claim for m in cfg.mixers for lr in cfg.lrs]
    if len(cfg.lrs) == 1:  # the one lr is the best: the seeds need not wait for the lr grid
        execute([(m, claim, cfg.lrs[0], seed) for m in cfg.mixers for seed in range(cfg.seeds)] + grid)
    else:
        execute([(m, claim, lr, 0) for m in cfg.mixers for lr in cfg.lrs])
        best = {m: best_lr_run([r for r in rows if r["mixer"] == m and _cell(r) == claim and r["seed"] == 0])["lr"]
                for m in cfg.mixers}
        execute([(m, claim, best[m], seed) for m in cfg.mixers for seed in range(1, cfg.seeds)] + grid)
    save()


def _cell(r: dict) -> tuple[int, int, int]:
    return (r["seq_len"], r["pairs"], r["width"])


def best_per_cell(rows: list[dict]) -> dict[tuple, dict]:
    """(mixer, T, N, D) -> the seed-0 row of the best lr (``probes.recall.best_lr_run``: the lowest
    training loss over the last tenth of steps, not the test accuracy the row reports)."""
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["seed"] == 0:
            runs.setdefault((r["mixer"], *_cell(r)), []).append(r)
    return {k: best_lr_run(rs) for k, rs in runs.items()}


def claim_stats(cfg: dict, rows: list[dict]) -> dict:
    cell = tuple(cfg["claim_cell"])
    best = best_per_cell(rows)
    per = {}
    for m in cfg["mixers"]:
        if (m, *cell) not in best:
            continue
        lr = best[(m, *cell)]["lr"]
        # in seed order: rows are saved as runs finish, and parallel runs finish in any order
        at = sorted((r for r in rows if r["mixer"] == m and _cell(r) == cell and r["lr"] == lr), key=lambda r: r["seed"])
        accs = [r["accuracy"] for r in at]
        per[m] = {"lr": lr, "accs": accs, "seeds": [r["seed"] for r in at],
                  "choice_loss": float(np.mean([choice_loss(r) for r in at])), **mean_ci(accs)}
    return per


def paired_difference(a: dict, b: dict) -> dict | None:
    """``mean_ci`` of a's accuracy minus b's over the seeds both have, seed by seed (``claim_stats``
    entries); None when they share no seed."""
    acc_b = dict(zip(b["seeds"], b["accs"]))
    diffs = [x - acc_b[s] for s, x in zip(a["seeds"], a["accs"]) if s in acc_b]
    return mean_ci(diffs) if diffs else None


def _draw_curves(cfg: dict, rows: list[dict], per: dict, out: Path) -> bool:
    """OUT/mqar_curves.png: the claim cell's training loss against steps, per mixer (the mean curve
    of its seeds at the best lr). Rows without a ``loss_curve`` (older runs) are left out; False,
    and no file, when none has one."""
    cell = tuple(cfg["claim_cell"])
    curves = {}
    for m, p in per.items():
        got = [r for r in rows if r["mixer"] == m and _cell(r) == cell and r["lr"] == p["lr"] and r.get("loss_curve")]
        if got:
            n = min(len(r["loss_curve"]) for r in got)
            curves[m] = (got[0]["curve_every"], np.mean([r["loss_curve"][:n] for r in got], axis=0), len(got))
    if not curves:
        (out / "mqar_curves.png").unlink(missing_ok=True)
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for m, (w, y, n) in curves.items():
        ax.plot((np.arange(len(y)) + 0.5) * w, y, label=f"{m} ({n} seed{'s' if n > 1 else ''})")
    ax.axhline(np.log(cfg["vocab"] / 2), color="gray", ls=":", lw=1, label="chance, ln(V/2)")
    T, N, D = cell
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (nats)")
    ax.set_title(f"MQAR training loss, T={T}, N={N}, D={D}, batch {cfg['batch']}", fontsize=9)
    ax.legend(fontsize=7)
    save_fig(fig, out / "mqar_curves.png")
    return True


def _ci_text(s: dict) -> str:
    """'95% CI [lo, hi]', or why there is none: one seed gives no interval."""
    return f"95% CI [{s['lo']:.3f}, {s['hi']:.3f}]" if s["n"] >= 2 else "one seed, no CI"


def report(out: Path) -> None:
    out = Path(out)
    res = read_json(out / RESULT)
    cfg, rows = res["config"], res["rows"]
    best = best_per_cell(rows)
    mixers = [m for m in cfg["mixers"] if any(k[0] == m for k in best)]
    cells = sorted({k[1:] for k in best})
    widths = list(cfg["widths"])  # the config's whole grid, so cells not run yet show as such
    plt = pyplot()
    fig, axes = plt.subplots(len(widths), len(mixers), figsize=(2.6 * len(mixers), 2.5 * len(widths) + 0.6),
                             squeeze=False)
    Ts, Ns = list(cfg["seq_lens"]), list(cfg["pairs"])
    for wi, D in enumerate(widths):
        for mi, m in enumerate(mixers):
            ax = axes[wi, mi]
            grid = np.full((len(Ns), len(Ts)), np.nan)
            for (mm, T, N, DD), r in best.items():
                if mm == m and DD == D:
                    grid[Ns.index(N), Ts.index(T)] = r["accuracy"]
            ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
            for i in range(len(Ns)):
                for j in range(len(Ts)):
                    if not np.isnan(grid[i, j]):
                        ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                                color="white" if grid[i, j] < 0.6 else "black")
                    elif Ts[j] >= 3 * Ns[i] and Ns[i] <= cfg["vocab"] // 2 - 1:
                        ax.text(j, i, "not run", ha="center", va="center", fontsize=6, color="gray")
            ax.set_xticks(range(len(Ts)), [str(t) for t in Ts], fontsize=7)
            ax.set_yticks(range(len(Ns)), [str(n) for n in Ns], fontsize=7)
            ax.set_title(f"{m}, D={D}", fontsize=9)
            if mi == 0:
                ax.set_ylabel("KV pairs N")
            if wi == len(widths) - 1:
                ax.set_xlabel("seq len T")
    fig.suptitle(f"MQAR accuracy, best lr per cell (V={cfg['vocab']}, {cfg['steps']} steps x {cfg['batch']}; "
                 f"chance {2 / cfg['vocab']:.2g})", fontsize=10, y=1.03)
    save_fig(fig, out / "mqar_heatmap.png")

    per = claim_stats(cfg, rows)
    curves = _draw_curves(cfg, rows, per, out)
    cands = [m for m in SELECTIVE if m in per]
    claims = []
    sel = min(cands, key=lambda m: per[m]["choice_loss"]) if cands else None  # on training loss, as the lrs
    diff = paired_difference(per[sel], per["ema"]) if sel and "ema" in per else None
    if diff is not None:
        verdict = verdict_from_interval(diff["lo"], diff["hi"], threshold=0.0) if diff["n"] >= 2 else "inconclusive"
        solved = per[sel]["mean"] >= 0.9
        if verdict == "confirmed" and not solved:
            verdict = "inconclusive"  # better than EMA, but not recall: selection did not *fix* it here
        T, N, D = cfg["claim_cell"]
        claims.append(Claim(
            claim="selection_fixes_recall", metric=f"MQAR accuracy, {sel} minus ema (best lr each)", paper=None,
            ours=diff["mean"], std=diff["std"] if diff["n"] > 1 else None, seeds=diff["n"],
            scale=f"2-layer D={D}, T={T}, N={N} pairs, V={cfg['vocab']}, {cfg['steps']} steps x {cfg['batch']}",
            verdict=verdict, command=command(NAME, out, cfg), labels="MQAR query labels",
            note=f"{sel} {per[sel]['mean']:.3f}, ema {per['ema']['mean']:.3f}"
                 + (f", attention {per['attention']['mean']:.3f}" if "attention" in per else "")
                 + f"; {_ci_text(diff)} of the difference; "
                 f"confirmed needs 2 or more seeds, the CI above 0 and {sel} >= 0.9"))
    write_claims(out, claims)

    lines = [f"# {NAME}: multi-query associative recall per context mixer", "",
             f"Made by `emaprobe.experiments.{NAME}`; drawn from `{RESULT}` alone. V={cfg['vocab']}, "
             f"{cfg['steps']} steps x {cfg['batch']} fresh sequences, "
             + (f"lr {cfg['lrs'][0]:g} (one lr, so no choice); " if len(cfg["lrs"]) == 1 else
                f"lrs {cfg['lrs']}, best lr per cell (the lowest training loss over the last tenth of steps, "
                "measured on fresh sequences, so the test accuracy shown plays no part in the choice); ")
             + f"chance = 2/V = {2 / cfg['vocab']:.2g}: values are uniform over V/2 tokens; "
             f"{res['device']}, {res['wall_seconds']} s"
             + (f" (resuming the runs of {', '.join(str(c)[:10] for c in res['resumed_from'])})"
                if res.get("resumed_from") else "") + ".", "", "![heatmap](mqar_heatmap.png)", "",
             "| T | N | D | " + " | ".join(mixers) + " |", "|---:|---:|---:|" + "---:|" * len(mixers)]
    for c in cells:
        cellv = [f"{best[(m, *c)]['accuracy']:.3f} ({best[(m, *c)]['lr']:g})" if (m, *c) in best else "-"
                 for m in mixers]
        lines.append(f"| {c[0]} | {c[1]} | {c[2]} | " + " | ".join(cellv) + " |")
    grid = [(T, N, D) for T in cfg["seq_lens"] for N in cfg["pairs"] for D in cfg["widths"]
            if N <= cfg["vocab"] // 2 - 1 and T >= 3 * N]
    todo = {c: [m for m in cfg["mixers"] if (m, *c) not in best] for c in grid}
    partly = [f"T={c[0]} N={c[1]} D={c[2]} (no {', '.join(ms)})" for c, ms in todo.items()
              if ms and len(ms) < len(cfg["mixers"])]
    untouched = [f"T={c[0]} N={c[1]} D={c[2]}" for c, ms in todo.items() if len(ms) == len(cfg["mixers"])]
    if partly or untouched:
        lines += ["", "The run was stopped before the whole grid; rerunning the same command resumes it. "
                  + (f"Partly measured: {'; '.join(partly)}. " if partly else "")
                  + (f"Not measured: {', '.join(untouched)}." if untouched else "")]
    if per:
        lines += ["", f"Claim cell T, N, D = {tuple(cfg['claim_cell'])}, seeds at the best lr:", ""]
        for m, p in per.items():
            lines.append(f"- {m}: {p['mean']:.3f} ± {p['std']:.3f} (lr {p['lr']:g}, n={p['n']}, {_ci_text(p)})")
    if curves:
        lines += ["", "Training loss at the claim cell, mean over the seeds at each mixer's best lr (runs made "
                  "before rows kept their curves are left out); chance is ln(V/2) nats:", "",
                  "![training loss](mqar_curves.png)"]
    for c in claims:
        lines += ["", f"Claim `{c.claim}`: {c.ours:+.3f} ± {c.std:.3f}: **{c.verdict}** ({c.note})."]
    if per:
        order = sorted(per, key=lambda m: -per[m]["mean"])
        solved = [m for m in order if per[m]["mean"] >= 0.9]
        lines += ["", "Against Zoology (Arora et al. 2023: attention solves MQAR at every width, input-dependent "
                  "matrix-state mixers close most of the gap, fixed filters need width growing with the pairs): "
                  "order at the claim cell here, best first: " + " > ".join(f"{m} {per[m]['mean']:.3f}" for m in order)
                  + ". " + (f"Solved (>= 0.9): {', '.join(solved)}." if solved else
                            f"No mixer solves the task at this budget ({cfg['steps'] * cfg['batch']:,} training sequences; "
                            "Zoology's sweeps train on millions), so only the order can be compared, not the "
                            "solved / unsolved split.")]
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")


__all__ = ["BUDGETS", "Config", "NAME", "report", "run", "smoke"]
