"""Dilution over depth: how much of what layer l was given can be read at the top of L layers?

Claim tested (shared/PAPER.md, claim 6): fixed-coefficient accumulation over depth
dilutes information. ``probes.depth`` builds stacks of L = 1..24 layers in which
each layer writes its own token into one residual stream, accumulated with a fixed
coefficient (``residual``: h + e; ``ema_depth``: (1 - beta) h + beta e) or with learned
per-layer, per-channel gates (``learned_gates``, trained to keep every layer's token).
A linear probe on the top state h_L names each layer's token; we report bits,
H - CE held out, mean and 95% t-interval over seeds. With ``ckpts`` (run folders of
``emaprobe lm train``) it also reads trained SPEN / GPT models: bits of the input
token x_t (and x_{t-1}) in the residual stream after each block (top words + other).

Command:   emaprobe run probe_depth --budget cpu --set ckpts='["runs/ckpt/spen-tiny","runs/ckpt/gpt-tiny"]' \
               --out results/probes/probe_depth   (the two tiny checkpoints trained as probe_lag's
               docstring says; without ckpts, the stacks alone)
           emaprobe run probe_depth --smoke                      (seconds; CI)
Hardware:  CPU, 2 shared cores; cpu budget 22 min with the two checkpoints (the probe `best` fits
           L-BFGS beside LDA; 405 s with LDA alone), on cores shared with a test run.
Measured (cpu budget, results/probes/probe_depth, 3 seeds, V=64, D=64, probe `best`): bits of layer
           1's token at the top of L = 1 / 8 / 24 layers: residual 6.00 / 4.69 / 1.57, ema_depth
           (beta .5) 6.00 / 0.00 / 0.00, learned_gates 6.00 / 4.97 / 1.19 (mean over layers at L=24:
           1.59, 0.69, 1.62). dilution_over_depth: 0.262 (95% CI 0.242-0.282) of the L=1 bits remain
           at L=24. On the stacks `best` took LDA in 596 of 603 fits; on the trained checkpoints
           L-BFGS in 45 of 60, and bits of x_(t-1) after the last block rose from LDA's 1.58 to
           1.97 (spen-tiny) and 0.49 to 0.74 (gpt-tiny).
Writes:    OUT/depth.json, OUT/README.md, OUT/depth_bits.png, OUT/claims.json (``dilution_over_depth``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emaprobe.experiments.common import command, probe_choice_lines, pyplot, save_fig
from emaprobe.experiments.protocol import Claim, verdict_from_interval, write_claims
from emaprobe.probes.depth import MECHANISMS, DepthStack, train_gates
from emaprobe.probes.linear import PROBE_METHODS, fit_probe, mean_ci
from emaprobe.probes.states import residual_states
from emaprobe.utils import atomic_write_json, atomic_write_text, read_json, run_record

NAME = "probe_depth"
RESULT = "depth.json"


@dataclass(frozen=True)
class Config:
    vocab: int = 64
    d_model: int = 64
    depths: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24)
    mechanisms: tuple[str, ...] = MECHANISMS
    beta: float = 0.5
    n_train: int = 8192
    n_test: int = 2048
    gate_steps: int = 300
    gate_lr: float = 1e-2
    seeds: int = 3
    ckpts: tuple[str, ...] = ()
    ckpt_seq_len: int = 128
    ckpt_windows: int = 128
    ckpt_classes: int = 128
    probe: str = "best"  # lda, lbfgs, or the better on held-out training rows (probes.linear)
    budget: str = "default"

    def __post_init__(self):
        if not self.depths or min(self.depths) < 1:
            raise ValueError(f"depths must be positive, got {self.depths}")
        if not self.mechanisms or len(set(self.mechanisms)) != len(self.mechanisms):
            raise ValueError(f"mechanisms must be distinct mechanism names, at least one; got {self.mechanisms}")
        for m in self.mechanisms:
            if m not in MECHANISMS:
                raise ValueError(f"unknown mechanism {m!r}; choose from {list(MECHANISMS)}")
        if self.vocab < 2:
            raise ValueError(f"vocab must be >= 2 (a probe names one of vocab tokens, H = log2 vocab bits), "
                             f"got {self.vocab}")
        for name in ("d_model", "n_train", "n_test", "seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gate_steps < 0:
            raise ValueError(f"gate_steps must be >= 0, got {self.gate_steps}")
        if not (math.isfinite(self.gate_lr) and self.gate_lr > 0):
            raise ValueError(f"gate_lr must be a finite number > 0, got {self.gate_lr}")
        if self.probe not in PROBE_METHODS:
            raise ValueError(f"probe must be one of {list(PROBE_METHODS)}, got {self.probe!r}")


def smoke() -> Config:
    return Config(vocab=16, d_model=16, depths=(1, 4), n_train=512, n_test=256, gate_steps=5, seeds=2,
                  ckpt_windows=8, ckpt_seq_len=32, budget="smoke")


def cpu() -> Config:
    return Config(budget="cpu")


BUDGETS = {"cpu": cpu}


def run_seed(cfg: Config, seed: int) -> dict:
    h = math.log2(cfg.vocab)
    out: dict = {}
    for mech in cfg.mechanisms:
        out[mech] = {}
        for L in cfg.depths:
            torch.manual_seed(seed)
            stack = DepthStack(mech, L, cfg.vocab, cfg.d_model, cfg.beta, seed=seed)
            curve = train_gates(stack, cfg.vocab, cfg.gate_steps, lr=cfg.gate_lr, seed=seed)
            g = torch.Generator().manual_seed(500 + seed)
            ztr = torch.randint(0, cfg.vocab, (cfg.n_train, L), generator=g)
            zte = torch.randint(0, cfg.vocab, (cfg.n_test, L), generator=g)
            with torch.no_grad():
                htr, hte = stack(ztr), stack(zte)
            fits = [fit_probe(htr, ztr[:, l], hte, zte[:, l], cfg.vocab, method=cfg.probe) for l in range(L)]
            out[mech][str(L)] = {"bits": [f.bits(h) for f in fits], "probes": [f.method for f in fits],
                                 "gate_loss_first_last": [curve[0], curve[-1]] if curve else None}
        print(f"  seed {seed} {mech:<14} layer-1 bits at L={cfg.depths[-1]}: {out[mech][str(cfg.depths[-1])]['bits'][0]:.2f}",
              flush=True)
    return out


def run_ckpt(cfg: Config, path: str, seed_count: int) -> dict:
    from emaprobe.train.corpus import open_split
    from emaprobe.train.run import load_run

    model, tok, run = load_run(path)
    valid, test = open_split("ptb:valid", tok), open_split("ptb:test", tok)
    T = cfg.ckpt_seq_len
    counts = np.bincount(np.asarray(valid[: len(valid)]), minlength=tok.vocab_size)
    top = np.argsort(-counts)[: cfg.ckpt_classes - 1]
    remap = torch.full((tok.vocab_size,), cfg.ckpt_classes - 1, dtype=torch.long)
    remap[torch.as_tensor(top)] = torch.arange(len(top))

    def windows(stream, s):
        g = torch.Generator().manual_seed(s)
        st = torch.randint(0, len(stream) - T - 1, (cfg.ckpt_windows,), generator=g)
        return torch.as_tensor(np.stack([np.asarray(stream[int(a): int(a) + T]) for a in st]), dtype=torch.long)

    per_seed = []
    for seed in range(seed_count):
        tr, te = windows(valid, 700 + seed), windows(test, 800 + seed)
        rtr, rte = residual_states(model, tr), residual_states(model, te)  # L+1 x (N, T, D)
        rows = []
        for l in range(len(rtr)):
            row = {}
            for lag in (0, 1):
                xtr = rtr[l][:, lag:].reshape(-1, rtr[l].shape[-1])
                xte = rte[l][:, lag:].reshape(-1, rte[l].shape[-1])
                ytr = remap[tr[:, : T - lag]].reshape(-1)
                yte = remap[te[:, : T - lag]].reshape(-1)
                fit = fit_probe(xtr, ytr, xte, yte, cfg.ckpt_classes, method=cfg.probe)
                row[f"lag{lag}"], row[f"lag{lag}_probe"] = fit.bits(), fit.method
            rows.append(row)
        per_seed.append(rows)
    return {"path": str(path), "kind": model.kind, "config_name": run.get("config_name"),
            "train_steps": (run.get("train") or run.get("train_config") or {}).get("steps"), "per_seed": per_seed}


def run(cfg: Config, out: Path) -> None:
    from emaprobe.train.run import run_folders

    out = Path(out)
    for path in cfg.ckpts:  # a missing checkpoint fails now, not after every seed's probes
        run_folders(path)
    t0 = time.perf_counter()
    seeds = [run_seed(cfg, s) for s in range(cfg.seeds)]
    ckpts = [run_ckpt(cfg, p, cfg.seeds) for p in cfg.ckpts]
    atomic_write_json(out / RESULT, run_record(experiment=NAME, config=dataclasses.asdict(cfg),
                                               h_bits=math.log2(cfg.vocab), per_seed=seeds, ckpts=ckpts,
                                               wall_seconds=round(time.perf_counter() - t0, 1)))


def first_layer(res: dict, mech: str) -> list[dict]:
    """Per depth L: bits of layer 1's token at the top, mean and CI over seeds."""
    return [{"L": L, **mean_ci([s[mech][str(L)]["bits"][0] for s in res["per_seed"]])}
            for L in res["config"]["depths"]]


def mean_layer(res: dict, mech: str) -> list[dict]:
    return [{"L": L, **mean_ci([float(np.mean(s[mech][str(L)]["bits"])) for s in res["per_seed"]])}
            for L in res["config"]["depths"]]


def report(out: Path) -> None:
    out = Path(out)
    res = read_json(out / RESULT)
    cfg = res["config"]
    Lmax = cfg["depths"][-1]
    plt = pyplot()
    ncol = 3 if res["ckpts"] else 2
    fig, axes = plt.subplots(1, ncol, figsize=(5.2 * ncol, 4.2), squeeze=False)
    ax = axes[0, 0]
    for ci, mech in enumerate(cfg["mechanisms"]):
        color = f"C{ci}"
        rows = first_layer(res, mech)
        Ls = [r["L"] for r in rows]
        ax.plot(Ls, [r["mean"] for r in rows], marker="o", ms=3, color=color, label=f"{mech}: layer 1")
        ax.fill_between(Ls, [r["lo"] for r in rows], [r["hi"] for r in rows], color=color, alpha=0.2)
        rows = mean_layer(res, mech)
        ax.plot(Ls, [r["mean"] for r in rows], ls="--", lw=1, color=color, label=f"{mech}: mean over layers")
    ax.set_xlabel("depth L")
    ax.set_ylabel("bits at the top, H - CE")
    ax.set_title(f"V={cfg['vocab']}, D={cfg['d_model']}, {cfg['seeds']} seeds (95% CI)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for ci, mech in enumerate(cfg["mechanisms"]):
        b = np.array([s[mech][str(Lmax)]["bits"] for s in res["per_seed"]])
        ax.plot(range(1, Lmax + 1), b.mean(0), marker="o", ms=3, color=f"C{ci}", label=mech)
    ax.set_xlabel(f"layer l (of L={Lmax})")
    ax.set_ylabel("bits of layer l's input at the top")
    ax.set_title(f"per layer, L={Lmax}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if res["ckpts"]:
        ax = axes[0, 2]
        for c in res["ckpts"]:
            for lag in (0, 1):
                m = np.mean([[r[f"lag{lag}"] for r in s] for s in c["per_seed"]], axis=0)
                ax.plot(range(len(m)), m, marker="o", ms=3, label=f"{c['config_name'] or c['kind']}: x_(t-{lag})")
        ax.set_xlabel("residual stream after block l (0 = embedding)")
        ax.set_ylabel("bits (top words + other)")
        ax.set_title("trained PTB models", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_fig(fig, out / "depth_bits.png")

    ratios = mean_ci([s["residual"][str(Lmax)]["bits"][0] / s["residual"]["1"]["bits"][0] for s in res["per_seed"]]) \
        if "residual" in cfg["mechanisms"] and 1 in cfg["depths"] else None
    claims = []
    if ratios:
        verdict = verdict_from_interval(ratios["lo"], ratios["hi"], threshold=0.5, above_confirms=False)
        claims.append(Claim(
            claim="dilution_over_depth",
            metric=f"fixed residual sum: bits of layer 1's token at the top of L={Lmax} / at L=1",
            paper=None, ours=ratios["mean"], std=ratios["std"] if ratios["n"] > 1 else None, seeds=ratios["n"],
            scale=f"random codebooks V={cfg['vocab']} D={cfg['d_model']}, {cfg['n_train']} probe samples",
            verdict=verdict, command=command(NAME, out, cfg), labels="probe labels: the layer tokens",
            note=f"95% CI [{ratios['lo']:.3f}, {ratios['hi']:.3f}]; confirmed when below 0.5"))
    write_claims(out, claims)

    lines = [f"# {NAME}: what of each layer's input survives to the top", "",
             f"Made by `emaprobe.experiments.{NAME}`; drawn from `{RESULT}` alone. V={cfg['vocab']} "
             f"(H = {res['h_bits']:.2f} bits), D={cfg['d_model']}, beta={cfg['beta']}, gates trained "
             f"{cfg['gate_steps']} steps; {cfg['seeds']} seeds; {res['device']}, {res['wall_seconds']} s.", "",
             "![depth](depth_bits.png)", "",
             "Bits at the top of L layers: of layer 1's token (mean ± std over seeds), and the mean over all L layers:", "",
             "| L | " + " | ".join(f"{m}: layer 1 | {m}: mean" for m in cfg["mechanisms"]) + " |",
             "|---:|" + "---:|" * (2 * len(cfg["mechanisms"]))]
    fl = {m: first_layer(res, m) for m in cfg["mechanisms"]}
    ml = {m: mean_layer(res, m) for m in cfg["mechanisms"]}
    for i, L in enumerate(cfg["depths"]):
        lines.append(f"| {L} | " + " | ".join(f"{fl[m][i]['mean']:.2f} ± {fl[m][i]['std']:.2f} | {ml[m][i]['mean']:.2f}"
                                               for m in cfg["mechanisms"]) + " |")
    for c in res["ckpts"]:
        lines += ["", f"Checkpoint `{c['path']}` ({c['config_name']}, {c['train_steps']} steps): bits of x_t and "
                  "x_(t-1) in the residual stream after each block:", "", "| after block | x_t | x_(t-1) |",
                  "|---:|---:|---:|"]
        for l in range(len(c["per_seed"][0])):
            a = np.mean([s[l]["lag0"] for s in c["per_seed"]])
            b = np.mean([s[l]["lag1"] for s in c["per_seed"]])
            lines.append(f"| {l} | {a:.2f} | {b:.2f} |")
    lines += _probe_choices(cfg, res)
    for c in claims:
        lines += ["", f"Claim `{c.claim}`: {c.ours:.3f} ± {c.std:.3f}: **{c.verdict}** ({c.note})."]
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")


def _probe_choices(cfg: dict, res: dict) -> list[str]:
    """README lines counting which probe ``best`` chose, per mechanism and per checkpoint (none for
    a fixed probe, or for results written before the choice was recorded)."""
    if cfg.get("probe", "lda") != "best":
        return []
    picks = {m: [p for s in res["per_seed"] for L in cfg["depths"] for p in s[m][str(L)].get("probes", [None])]
             for m in cfg["mechanisms"]}
    picks.update({f"checkpoint {c['config_name'] or c['path']}": [r.get(f"lag{lag}_probe") for s in c["per_seed"]
                                                                 for r in s for lag in (0, 1)]
                  for c in res["ckpts"]})
    return probe_choice_lines(picks) if all(all(ps) for ps in picks.values()) else []


__all__ = ["BUDGETS", "Config", "NAME", "report", "run", "smoke"]
