"""Dilution over time: bits of x_{t-k} a context state still holds, k = 1..512, against the analytic curve.

Claim tested (shared/PAPER.md, claims 5 and 6): fixed-coefficient accumulation
dilutes content irreversibly over time. A frozen-feature linear softmax probe reads
the state at t and names x_{t-k}; we report bits recovered, H(x) - CE (held out),
for each lag k and each mechanism, mean and 95% t-interval over seeds.

States (S = 3 timescales, D = 64, V = 64 i.i.d. uniform tokens, H(x) = 6 bits):
    ema          the paper's fixed traces alpha = (.5, .1, .02) of random embeddings
    learned_ema  learned per-channel decays          \\
    selective    input-dependent decay and gate       } each briefly trained (``train_steps``)
    gla          input-dependent decay, matrix state  } to name x_{t-k} for every probed k,
    attention    softmax heads, + sinusoidal positions/  then frozen; fresh probes fit after
Every readout is S x D = 192 numbers per position (gla's matrix state and attention's
KV cache are larger; the probe reads the mixer output y_t, as the next layer does).
    ckpt         with ``ckpts`` = run folders of ``emaprobe lm train``: every block's
                 state of a trained SPEN (context H) or GPT (residual stream), on PTB
                 test windows; classes are the top ``ckpt_classes - 1`` words + other.
The analytic curve (``emaprobe.probes.analytic``, derivation in its docstring) is
drawn beside the measured ``ema`` curve.

Command:   emaprobe run probe_lag --budget cpu --out results/probes/probe_lag
           emaprobe run probe_lag --budget cpu --set ckpts='["runs/ckpt/spen-tiny","runs/ckpt/gpt-tiny"]' ...
           emaprobe run probe_lag --smoke                 (seconds; CI)
           The committed checkpoints (runs/, not committed) were trained with
           emaprobe lm train --config spen-tiny --data ptb --steps 300 --out runs/ckpt/spen-tiny \
               --set train.optim.lr=3e-3 --set train.batch_size=16 --set train.seq_len=128 --set train.ckpt_every=0
           (and the same with gpt-tiny): 614k tokens each, valid ppl about 300.
Hardware:  CPU, 2 shared cores; runs on CUDA unchanged (``device=auto``).
Run time:  cpu budget 46 minutes on 2 cores shared with test runs (26 for the mixers, 20 for two tiny
           checkpoints: the probe fits L-BFGS beside LDA at every lag); smoke a few seconds after start-up.
Measured (cpu budget, results/probes/probe_lag, 3 seeds, V=64, H = 6 bits, probe `best`): bits at
           k = 1 / 8 / 64: ema 2.80 / 1.50 / 0.08, learned_ema 3.28 / 1.54 / 0.01, selective 3.22 / 0.77 /
           0.00, gla 5.20 / 1.43 / 0.00, attention 1.23 / 0.56 / 0.00; ema analytic 5.94 / 2.90 / 0.32.
           The analytic curve has the measured shape at about twice its level (median ratio 0.5).
           dilution_over_time: ema keeps 0.030 (95% CI 0.026-0.034) of its lag-1 bits at k = 64. With
           LDA alone (the probe before) the lag-1 figures were 0.20-0.35 bits lower: it named x_t for
           x_(t-1) in nearly every row (probes.linear).
Writes:    OUT/lag.json (config, per-seed bits per mechanism and lag, the analytic
           curve, checkpoint curves), OUT/README.md, OUT/lag_bits.png, OUT/claims.json
           (``dilution_over_time``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emaprobe.experiments.common import command, pick_device, probe_choice_lines, pyplot, save_fig
from emaprobe.experiments.protocol import Claim, verdict_from_interval, write_claims
from emaprobe.probes.analytic import analytic_bits, lag_snr
from emaprobe.probes.linear import PROBE_METHODS, fit_probe, mean_ci
from emaprobe.probes.states import block_states, build_probe_mixer, mixer_states, train_on_lags
from emaprobe.tasks.lag_identity import default_lags, lag_targets, lag_tokens, random_embeddings, read_positions
from emaprobe.utils import atomic_write_json, atomic_write_text, read_json, run_record

NAME = "probe_lag"
RESULT = "lag.json"


@dataclass(frozen=True)
class Config:
    vocab: int = 64  # V
    d_model: int = 64  # D
    alphas: tuple[float, ...] = (0.5, 0.1, 0.02)  # S timescales
    lags: tuple[int, ...] = default_lags(512)
    n_read: int = 32  # read positions per sequence (the last ones)
    train_seqs: int = 512
    test_seqs: int = 128
    seeds: int = 3
    mixers: tuple[str, ...] = ("ema", "learned_ema", "selective", "gla", "attention")
    train_steps: int = 150  # brief training of learnable mixers on the lag objective; 0 = random init
    train_batch: int = 8
    train_lr: float = 3e-3
    key_dim: int = 16  # gla / attention key width per head
    rank: int = 16  # low-rank gate width (selective, gla)
    probe: str = "best"  # lda, lbfgs, or the better on held-out training rows (probes.linear)
    shrink: float = 1e-3
    ckpts: tuple[str, ...] = ()  # run folders of `emaprobe lm train`
    ckpt_data: str = "ptb"
    ckpt_seq_len: int = 256
    ckpt_read: int = 64
    ckpt_lags: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32, 64, 128, 192)
    ckpt_windows: int = 256  # probe-train windows (valid split); as many test windows
    ckpt_classes: int = 128
    claim_lag: int = 64  # dilution_over_time compares bits at this lag with bits at lag 1
    device: str = "auto"
    budget: str = "default"

    def __post_init__(self):
        if not self.lags or min(self.lags) < 1:
            raise ValueError(f"lags must be positive integers, got {self.lags}")
        if self.claim_lag not in self.lags or 1 not in self.lags:
            raise ValueError(f"lags must hold 1 and claim_lag={self.claim_lag}; got {self.lags}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.probe not in PROBE_METHODS:
            raise ValueError(f"probe must be one of {list(PROBE_METHODS)}, got {self.probe!r}")

    @property
    def seq_len(self) -> int:
        return max(self.lags) + self.n_read


def smoke() -> Config:
    return Config(vocab=16, d_model=16, lags=(1, 2, 4, 8), n_read=8, train_seqs=48, test_seqs=16, seeds=2,
                  mixers=("ema", "selective", "attention"), train_steps=3, claim_lag=8, ckpt_windows=16,
                  ckpt_seq_len=32, ckpt_read=8, ckpt_lags=(0, 1, 4), budget="smoke")


def cpu() -> Config:
    return Config(budget="cpu")


def gpu() -> Config:
    return Config(vocab=256, d_model=128, lags=default_lags(1024), n_read=64, train_seqs=2048, test_seqs=512,
                  seeds=5, train_steps=1000, train_batch=32, key_dim=64, rank=32, budget="gpu")


BUDGETS = {"cpu": cpu, "gpu": gpu}


def _probe(cfg: Config, ftr, ytr, fte, yte, n_classes: int):
    return fit_probe(ftr, ytr, fte, yte, n_classes, method=cfg.probe, shrink=cfg.shrink)


def _lag_curve(cfg: Config, ftr: torch.Tensor, ttr, fte: torch.Tensor, tte, pos) -> list[dict]:
    h = math.log2(cfg.vocab)
    rows = []
    for k in cfg.lags:
        _, ytr = lag_targets(ttr, k, pos)
        _, yte = lag_targets(tte, k, pos)
        fit = _probe(cfg, ftr.flatten(0, 1), ytr.reshape(-1), fte.flatten(0, 1), yte.reshape(-1), cfg.vocab)
        rows.append({"lag": k, "bits": fit.bits(h), "ce_bits": fit.ce_bits, "accuracy": fit.accuracy,
                     "probe": fit.method})
    return rows


def run_seed(cfg: Config, seed: int, dev: torch.device, log=print) -> dict:
    T = cfg.seq_len
    pos = read_positions(T, max(cfg.lags), cfg.n_read)
    emb = random_embeddings(cfg.vocab, cfg.d_model, seed=seed).to(dev)
    ttr = lag_tokens(cfg.train_seqs, T, cfg.vocab, seed=100 + seed)
    tte = lag_tokens(cfg.test_seqs, T, cfg.vocab, seed=200 + seed)
    out = {}
    for name in cfg.mixers:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        mixer = build_probe_mixer(name, cfg.d_model, cfg.alphas, key_dim=cfg.key_dim, rank=cfg.rank).to(dev)
        curve = train_on_lags(mixer, name, emb, cfg.lags, T, cfg.n_read, cfg.train_steps, cfg.train_batch,
                              cfg.train_lr, seed)
        ftr = mixer_states(mixer, name, emb, ttr, pos)  # (N, P, S D)
        fte = mixer_states(mixer, name, emb, tte, pos)
        rows = _lag_curve(cfg, ftr, ttr, fte, tte, pos)
        out[name] = {"curve": rows, "train_loss_first_last": [curve[0], curve[-1]] if curve else None,
                     "trained_steps": len(curve), "seconds": round(time.perf_counter() - t0, 1)}
        log(f"  seed {seed} {name:<12} bits k=1 {rows[0]['bits']:.2f}, k={cfg.claim_lag} "
            f"{next(r['bits'] for r in rows if r['lag'] == cfg.claim_lag):.2f} ({out[name]['seconds']} s)")
    return out


def _ckpt_windows(stream, n: int, T: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - T - 1, (n,), generator=g)
    arr = np.stack([np.asarray(stream[int(s) : int(s) + T]) for s in starts])
    return torch.as_tensor(arr, dtype=torch.long)


def run_ckpt(cfg: Config, path: str, dev: torch.device, log=print) -> dict:
    """Per block of a trained LM: bits of x_{t-k} (top words + other) on PTB windows, per seed."""
    from emaprobe.train.corpus import open_split
    from emaprobe.train.run import load_run

    model, tok, run = load_run(path, device=dev)
    if cfg.ckpt_data != "ptb":
        raise ValueError(f"ckpt_data: only 'ptb' (its valid and test splits) is wired here, got {cfg.ckpt_data!r}")
    valid, test = open_split("ptb:valid", tok), open_split("ptb:test", tok)
    T, P = cfg.ckpt_seq_len, cfg.ckpt_read
    if max(cfg.ckpt_lags) > T - P:
        raise ValueError(f"ckpt_lags up to {max(cfg.ckpt_lags)} need ckpt_seq_len >= {max(cfg.ckpt_lags) + P}")
    pos = torch.arange(T - P, T)
    # classes: the most frequent words of the valid split, the rest pooled into one class
    counts = np.bincount(np.asarray(valid[: len(valid)]), minlength=tok.vocab_size)
    top = np.argsort(-counts)[: cfg.ckpt_classes - 1]
    remap = torch.full((tok.vocab_size,), cfg.ckpt_classes - 1, dtype=torch.long)
    remap[torch.as_tensor(top)] = torch.arange(len(top))
    per_seed = []
    for seed in range(cfg.seeds):
        tr = _ckpt_windows(valid, cfg.ckpt_windows, T, 300 + seed)
        te = _ckpt_windows(test, cfg.ckpt_windows, T, 400 + seed)

        def states(idx):
            outs = [[] for _ in range(model.config.n_layer)]
            for i in range(0, len(idx), 32):
                for b, s in enumerate(block_states(model, idx[i : i + 32].to(dev))):
                    outs[b].append(s[:, pos.to(dev)].cpu())
            return [torch.cat(o) for o in outs]  # per block (N, P, F)

        str_, ste = states(tr), states(te)
        blocks = []
        for b in range(len(str_)):
            rows = []
            for k in cfg.ckpt_lags:
                ytr = remap[tr[:, pos - k]].reshape(-1)
                yte = remap[te[:, pos - k]].reshape(-1)
                fit = _probe(cfg, str_[b].flatten(0, 1), ytr, ste[b].flatten(0, 1), yte, cfg.ckpt_classes)
                rows.append({"lag": k, "bits": fit.bits(), "ce_bits": fit.ce_bits, "h_bits": fit.marginal_bits,
                             "accuracy": fit.accuracy, "probe": fit.method})
            blocks.append(rows)
        per_seed.append(blocks)
        log(f"  ckpt {path} seed {seed}: last block bits k=1 {blocks[-1][1]['bits']:.2f}")
    mc = dataclasses.asdict(model.config)
    return {"path": str(path), "kind": model.kind, "model_config": mc, "config_name": run.get("config_name"),
            "train_steps": (run.get("train") or run.get("train_config") or {}).get("steps"), "per_seed": per_seed}


def run(cfg: Config, out: Path) -> None:
    from emaprobe.train.run import run_folders

    out = Path(out)
    for path in cfg.ckpts:  # a missing checkpoint fails now, not after every seed's probes
        run_folders(path)
    dev = pick_device(cfg.device)
    t0 = time.perf_counter()
    seeds = [run_seed(cfg, s, dev) for s in range(cfg.seeds)]
    history = cfg.seq_len - cfg.n_read  # the earliest read position: the least history
    analytic = analytic_bits(cfg.alphas, cfg.lags, cfg.vocab, cfg.d_model, history)
    snr = lag_snr(cfg.alphas, cfg.lags, history)
    ckpts: list[dict] = []

    def save():
        atomic_write_json(out / RESULT, run_record(
            experiment=NAME, config=dataclasses.asdict(cfg), h_bits=math.log2(cfg.vocab), per_seed=seeds,
            analytic={"lags": list(cfg.lags), "bits": analytic.tolist(), "snr": snr.tolist(), "history": history},
            ckpts=ckpts, ckpts_done=len(ckpts) == len(cfg.ckpts), torch_threads=torch.get_num_threads(),
            wall_seconds=round(time.perf_counter() - t0, 1)))

    save()  # the mixer curves are kept even if a checkpoint then fails to load
    for p in cfg.ckpts:
        ckpts.append(run_ckpt(cfg, p, dev))
        save()


def summarise(res: dict) -> dict[str, list[dict]]:
    """mechanism -> per lag: mean, std, lo, hi over seeds."""
    cfg = res["config"]
    out = {}
    for name in cfg["mixers"]:
        rows = []
        for i, k in enumerate(cfg["lags"]):
            rows.append({"lag": k, **mean_ci([s[name]["curve"][i]["bits"] for s in res["per_seed"]])})
        out[name] = rows
    return out


def claim_ratio(res: dict, name: str = "ema") -> dict:
    """bits(claim_lag) / bits(1) per seed, for ``name``: the fraction left after claim_lag steps."""
    cfg = res["config"]
    i1, ik = cfg["lags"].index(1), cfg["lags"].index(cfg["claim_lag"])
    vals = [s[name]["curve"][ik]["bits"] / s[name]["curve"][i1]["bits"] for s in res["per_seed"]]
    return mean_ci(vals)


def report(out: Path) -> None:
    out = Path(out)
    res = read_json(out / RESULT)
    cfg = res["config"]
    summ = summarise(res)
    an = res["analytic"]
    plt = pyplot()
    ncol = 2 if res["ckpts"] else 1
    fig, axes = plt.subplots(1, ncol, figsize=(6.4 * ncol, 4.4), squeeze=False)
    ax = axes[0, 0]
    for name, rows in summ.items():
        ks = [r["lag"] for r in rows]
        ax.plot(ks, [r["mean"] for r in rows], marker="o", ms=3, label=name)
        ax.fill_between(ks, [r["lo"] for r in rows], [r["hi"] for r in rows], alpha=0.2)
    ax.plot(an["lags"], an["bits"], "k--", lw=1.5, label="ema, analytic")
    ax.axhline(res["h_bits"], color="gray", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("lag k")
    ax.set_ylabel(r"bits of $x_{t-k}$ recovered, H(x) - CE")
    ax.set_title(f"lag-k identity: V={cfg['vocab']}, D={cfg['d_model']}, S={len(cfg['alphas'])}, "
                 f"{cfg['seeds']} seeds (95% CI)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if res["ckpts"]:
        ax2 = axes[0, 1]
        for c in res["ckpts"]:
            nb = len(c["per_seed"][0])
            lags = [r["lag"] for r in c["per_seed"][0][0]]
            for b in (0, nb - 1):
                m = [np.mean([s[b][i]["bits"] for s in c["per_seed"]]) for i in range(len(lags))]
                ax2.plot([max(k, 0.5) for k in lags], m, marker="o", ms=3,
                         label=f"{c['config_name'] or c['kind']} block {b + 1}/{nb}")
        ax2.set_xscale("log", base=2)
        ax2.set_xlabel("lag k (0 plotted at 0.5)")
        ax2.set_ylabel("bits (top words + other)")
        ax2.set_title("trained PTB models, block states", fontsize=9)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7)
    save_fig(fig, out / "lag_bits.png")

    ratio = claim_ratio(res, "ema")
    k = cfg["claim_lag"]
    verdict = verdict_from_interval(ratio["lo"], ratio["hi"], threshold=0.5, above_confirms=False)
    claims = [Claim(
        claim="dilution_over_time", metric=f"fixed EMA: bits of x_(t-k) at k={k} / bits at k=1 (linear probe)",
        paper=None, ours=ratio["mean"], std=ratio["std"] if ratio["n"] > 1 else None, seeds=ratio["n"],
        scale=f"random embeddings V={cfg['vocab']} D={cfg['d_model']} alphas={tuple(cfg['alphas'])}, "
              f"{cfg['train_seqs'] * cfg['n_read']} probe samples",
        verdict=verdict, command=command(NAME, out, cfg), labels="probe labels: the lagged tokens",
        note=f"95% CI [{ratio['lo']:.3f}, {ratio['hi']:.3f}]; confirmed when the CI lies below 0.5 "
             "(more than half the bits gone after k steps)")]
    write_claims(out, claims)

    lines = [f"# {NAME}: bits of x_(t-k) left in a context state", "",
             f"Made by `emaprobe.experiments.{NAME}`; drawn from `{RESULT}` alone. "
             f"V={cfg['vocab']} uniform tokens (H = {res['h_bits']:.2f} bits), D={cfg['d_model']}, "
             f"alphas={tuple(cfg['alphas'])}, {cfg['seeds']} seeds, probe `{cfg['probe']}` on "
             f"{cfg['train_seqs'] * cfg['n_read']} train / {cfg['test_seqs'] * cfg['n_read']} test states; "
             f"learnable mixers trained {cfg['train_steps']} steps on the lag objective, then frozen. "
             f"{res['device']}, {res['wall_seconds']} s.", "",
             "![lag bits](lag_bits.png)", "",
             "| lag k | " + " | ".join(summ) + " | ema analytic |",
             "|---:|" + "---:|" * (len(summ) + 1)]
    for i, k_ in enumerate(cfg["lags"]):
        cells = [f"{summ[n][i]['mean']:.2f} ± {summ[n][i]['std']:.2f}" for n in summ]
        lines.append(f"| {k_} | " + " | ".join(cells) + f" | {an['bits'][i]:.2f} |")
    if "ema" in summ:
        meas = np.array([r["mean"] for r in summ["ema"]])
        ana = np.array(an["bits"])
        lines += ["", f"Measured ema against analytic: mean |difference| {np.mean(np.abs(meas - ana)):.2f} bits, "
                  f"largest {np.max(np.abs(meas - ana)):.2f} bits (at k={cfg['lags'][int(np.argmax(np.abs(meas - ana)))]}); "
                  f"total bits summed over lags {meas.sum():.1f} measured, {ana.sum():.1f} analytic."]
    picks = {n: [r.get("probe") for ps in res["per_seed"] for r in ps[n]["curve"]] for n in summ}
    if cfg["probe"] == "best" and all(all(p) for p in picks.values()):
        lags = {n: sorted({r["lag"] for ps in res["per_seed"] for r in ps[n]["curve"] if r["probe"] == "lbfgs"})
                for n in summ}
        lines += probe_choice_lines(picks, {n: f"lags {', '.join(map(str, ks))}" for n, ks in lags.items() if ks})
    totals = {n: float(sum(max(r["mean"], 0.0) for r in rows)) for n, rows in summ.items()}
    lines += ["", "Bits summed over the probed lags (negative means clipped to 0), the state's total "
              "recoverable identity budget: " + ", ".join(f"{n} {v:.1f}" for n, v in totals.items()) + "."]
    for n, rows in summ.items():
        gone = next((r["lag"] for r in rows if r["hi"] < 0.05), None)
        lines.append(f"- {n}: {rows[0]['mean']:.2f} bits at k=1; below 0.05 bits (CI) from k={gone}.")
    if "ema" in summ:
        meas = np.array([r["mean"] for r in summ["ema"]])
        ana = np.array(an["bits"])
        long = [i for i, k_ in enumerate(cfg["lags"]) if k_ >= 8 and ana[i] > 0.05]
        ratio_long = float(np.median(meas[long] / ana[long])) if long else float("nan")
        short = [i for i, k_ in enumerate(cfg["lags"]) if k_ < 8]
        ratio_short = float(np.median(meas[short] / ana[short])) if short else float("nan")
        lines += ["", "The analytic curve treats the other lags' interference as Gaussian noise. Measured / analytic "
                  f"(median over lags): {ratio_short:.2f} at k < 8, {ratio_long:.2f} at k >= 8 (where the analytic "
                  "curve is above 0.05 bits): the analytic curve has the measured shape (where the bits fall, where "
                  "they reach zero) but not its level. It is an optimistic Gaussian-channel figure: the real "
                  "interference is a few strong recent codewords plus many weak ones, and a linear softmax "
                  "names a strong interfering token with confidence; the probe also learns from finite samples."]
    lines += ["", "The learnable mixers were trained briefly on all lags at once; what they learned favours the "
              "short lags they could fit."]
    for c in res["ckpts"]:
        lags = [r["lag"] for r in c["per_seed"][0][0]]
        lines += ["", f"Checkpoint `{c['path']}` ({c['config_name']}, {c['train_steps']} steps): bits per block "
                  f"(rows) and lag (columns), mean over {len(c['per_seed'])} window draws. Words are not i.i.d.: "
                  "bits at lag k include what the state predicts of x_(t-k) from its neighbours.", "",
                  "| block | " + " | ".join(f"k={k_}" for k_ in lags) + " |", "|---|" + "---:|" * len(lags)]
        for b in range(len(c["per_seed"][0])):
            m = [np.mean([s[b][i]["bits"] for s in c["per_seed"]]) for i in range(len(lags))]
            lines.append(f"| {b + 1} | " + " | ".join(f"{v:.2f}" for v in m) + " |")
    lines += ["", f"Claim `dilution_over_time`: ema keeps {ratio['mean']:.3f} (95% CI [{ratio['lo']:.3f}, "
              f"{ratio['hi']:.3f}]) of its lag-1 bits at k={k}: **{verdict}**.", ""]
    atomic_write_text(out / "README.md", "\n".join(lines))


__all__ = ["BUDGETS", "Config", "NAME", "report", "run", "smoke"]
