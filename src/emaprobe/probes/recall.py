"""MQAR recall: a small residual model per context mixer, trained and scored (Zoology protocol).

    model = RecallModel(RecallModelConfig(mixer="gla", d_model=64, vocab=512, seq_len=128))
    result = train_recall(model, MQARConfig(512, 128, 16), steps=300, lr=1e-3, seed=0)
    result["accuracy"]        # held-out query accuracy

Symbols: B batch, T sequence length, D width, S timescales (mixer heads), V vocabulary.

The model, L blocks (L = 2 as in Zoology's MQAR sweeps) over learned token and
position embeddings (Zoology's attention baseline has positions too; the mixers
that carry order in their decays just learn to use them or not):

    x = E[tok] + P[t]                                      (B, T, D)
    per block:  u = ShortConv(RMSNorm(x))                  depthwise causal, width 3
                H = mixer(u)                               (B, T, S, D)
                x = x + W_o vec(H)                         W_o: S D -> D
                x = x + MLP(RMSNorm(x))                    GELU, 4D hidden
    logits = RMSNorm(x) E^T at the query positions only    (queries, V)

The short convolution (width ``short_conv``; 0 removes it) is the token shift that
Zoology's gated-convolution models, H3, Based and fla's GLA all put in front of the
mixer: it lets a value see its key one step back without spending the mixer on it.
Beyond that window the mixer is the only place positions exchange information, so
whatever the model recalls across the sequence went through it. Loss and accuracy are on query positions only (label -100
elsewhere), as in Zoology. Training draws fresh sequences every step (seeded); the
held-out set is a disjoint seed range.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from emaprobe.layers import build_mixer
from emaprobe.tasks.mqar import IGNORE, MQARConfig, mqar_batch
from emaprobe.utils import atomic_write


@dataclass(frozen=True)
class RecallModelConfig:
    mixer: str = "attention"
    d_model: int = 64  # D
    vocab: int = 512  # V
    seq_len: int = 128  # T, the largest the position table holds
    n_layer: int = 2
    alphas: tuple[float, ...] = (0.5, 0.1, 0.02)  # S timescales / heads
    key_dim: int = 16  # gla, attention
    rank: int = 16  # selective, gla gates
    short_conv: int = 3  # width of the causal depthwise conv before the mixer; 0 = none
    gla_backend: str = "auto"  # gla's kernel (ops.gla: auto, torch, naive, or one registered); how, not what


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RecallBlock(nn.Module):
    def __init__(self, cfg: RecallModelConfig):
        super().__init__()
        D = cfg.d_model
        self.norm1 = RMSNorm(D)
        self.conv_width = int(cfg.short_conv)
        if self.conv_width:
            self.conv = nn.Conv1d(D, D, self.conv_width, groups=D, padding=self.conv_width - 1)
        kernel = {"backend": cfg.gla_backend} if cfg.mixer == "gla" else {}  # the scan mixers' backend is another
        self.mixer = build_mixer(cfg.mixer, D, strict=False, alphas=cfg.alphas, key_dim=cfg.key_dim, rank=cfg.rank,
                                 **kernel)
        S = self.mixer.n_scales
        self.out = nn.Linear(S * D, D, bias=False)  # W_o
        self.norm2 = RMSNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def short_conv(self, u: torch.Tensor) -> torch.Tensor:
        """The causal depthwise conv, y_t = b + sum_j w_j u_{t-j} (j < width), as width shifted
        multiply-adds in the (B, T, D) layout: the same sum as ``self.conv`` on the transposed
        input with its look-ahead tail dropped (tested), without the two transposes and cuDNN's
        depthwise kernels. Summed in u's dtype and rounded once to autocast's, as the conv's
        output would be under autocast."""
        T, w = u.shape[1], self.conv_width
        weight = self.conv.weight[:, 0].to(u.dtype)  # (D, width); tap width-1 meets u_t, as Conv1d has it
        pad = F.pad(u, (0, 0, w - 1, 0))  # (B, T + width - 1, D), zeros before t = 0
        y = self.conv.bias.to(u.dtype) + pad[:, :T] * weight[:, 0]
        for j in range(1, w):
            y = y + pad[:, j:j + T] * weight[:, j]
        kind = u.device.type
        return y.to(torch.get_autocast_dtype(kind)) if torch.is_autocast_enabled(kind) else y

    def forward(self, x):
        u = self.norm1(x)  # (B, T, D)
        if self.conv_width:
            u = self.short_conv(u)
        H, _ = self.mixer(u)  # (B, T, S, D)
        x = x + self.out(H.flatten(2).to(x.dtype))  # (B, T, D)
        return x + self.mlp(self.norm2(x))


class RecallModel(nn.Module):
    def __init__(self, cfg: RecallModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(RecallBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor,
                n_queries: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (Q, V), targets (Q,)) at the query positions, Q = queries in the batch, in
        row-major order. ``n_queries``: the number of queries in every row, when the caller knows
        it (MQAR has one per pair); then they are found by a sort of fixed shape instead of a
        boolean mask, whose data-dependent size makes the GPU wait for the host every step."""
        B, T = tokens.shape
        if T > self.cfg.seq_len:
            raise ValueError(f"RecallModel: sequence of {T} tokens, position table holds {self.cfg.seq_len}")
        x = self.tok(tokens) + self.pos(torch.arange(T, device=tokens.device))  # (B, T, D)
        for blk in self.blocks:
            x = blk(x)
        if n_queries is None:
            mask = labels != IGNORE  # (B, T)
            return F.linear(self.norm(x[mask]), self.tok.weight), labels[mask]
        # stable: the query positions come first, each row's in ascending order, as x[mask] has them
        pos = torch.sort((labels != IGNORE).int(), dim=1, descending=True, stable=True).indices[:, :n_queries]
        h = x.gather(1, pos.unsqueeze(-1).expand(-1, -1, x.shape[-1])).flatten(0, 1)  # (B n_queries, D)
        return F.linear(self.norm(h), self.tok.weight), labels.gather(1, pos).flatten()


def _autocast(device: torch.device):
    """bf16 autocast on CUDA (weights and the loss stay float32), as the LM trainer does; off on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def recall_accuracy(model: RecallModel, task: MQARConfig, n: int, seed: int, device, batch: int = 64) -> float:
    model.eval()
    device = torch.device(device)
    hit = torch.zeros((), dtype=torch.long, device=device)
    tot = 0
    with torch.no_grad(), _autocast(device):
        for i in range(0, n, batch):
            b = mqar_batch(task, min(batch, n - i), seed=seed + i, device=device)
            logits, y = model(b.tokens, b.labels, task.n_pairs)
            hit += (logits.argmax(-1) == y).sum()
            tot += y.numel()
    model.train()
    return int(hit) / max(tot, 1)


def recall_step(model: RecallModel, opt: torch.optim.Optimizer, task: MQARConfig, batch: int, seed: int,
                device: torch.device) -> torch.Tensor:
    """One training step on a fresh batch drawn from ``seed``; returns the loss, left on the device
    (nothing here waits for the GPU: ``tests/probes/test_recall_gpu.py`` checks it)."""
    b = mqar_batch(task, batch, seed=seed, device=device)
    with _autocast(device):
        logits, y = model(b.tokens, b.labels, task.n_pairs)
    loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.detach()


def _run_key(model: RecallModel, task: MQARConfig, steps: int, lr: float, seed: int, batch: int,
             weight_decay: float) -> dict:
    """What a checkpoint must match to be resumed: the model, the task and the training settings
    (not the GLA kernel, which computes the same model)."""
    arch = {k: v for k, v in dataclasses.asdict(model.cfg).items() if k != "gla_backend"}
    return {"model": arch, "task": dataclasses.asdict(task), "steps": steps,
            "lr": lr, "seed": seed, "batch": batch, "weight_decay": weight_decay}


def _load_partial(path: Path, key: dict, device: torch.device) -> dict:
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"{path}: not a readable MQAR checkpoint ({err}); delete it to start the run afresh") from err
    if ck.get("key") != key:
        diff = sorted(k for k in key if ck.get("key", {}).get(k) != key[k])
        raise ValueError(f"{path} is the checkpoint of another run (it differs in {', '.join(diff) or 'its format'}); "
                         "delete it, or give this run another checkpoint path")
    return ck


def train_recall(
    model: RecallModel,
    task: MQARConfig,
    steps: int,
    lr: float,
    seed: int,
    batch: int = 32,
    n_test: int = 256,
    weight_decay: float = 0.1,
    device: torch.device | str = "cpu",
    check_every: int = 100,
    checkpoint: str | os.PathLike | None = None,
    compile: bool = False,
) -> dict:
    """AdamW, linear warm-up (10%) then cosine to zero; fresh sequences every step, made on ``device``.

    On CUDA the step runs under bf16 autocast. The loss is read back to the host only every
    ``check_every`` steps (a sync per step would leave a GPU waiting on Python), so a loss that
    goes non-finite stops training at the next check; ``steps`` counts the finite ones.
    ``checkpoint``: a file the run is saved to at every check (atomically: model, optimizer,
    schedule, losses so far) and resumed from when it exists, so a run stopped part way goes on
    from its last check. Every batch is drawn from ``seed`` and its step, so on the CPU a resumed
    run ends bit for bit where an unbroken one does (tested). The caller deletes the file once the
    result is safe. A checkpoint of another run (model, task or settings) is refused, not loaded.
    ``compile``: train through ``torch.compile(model)`` (fused kernels, fewer launches; the first
    steps compile); scoring stays eager.
    Returns accuracy on ``n_test`` held-out sequences, the last training losses, the step time
    (``seconds`` summed over resumes), whether the loss ever went non-finite (a diverged lr scores
    0), ``resumed_at``, the step the run went on from (0: it ran unbroken), and ``loss_curve``:
    the mean training loss of each window of ``curve_every`` steps (steps // 50: about 50 points,
    the same however often the loss is read back or the run was resumed).
    """
    device = torch.device(device)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
    )
    losses: list[float] = []
    pending: list[torch.Tensor] = []  # losses not yet read back
    diverged = False
    start, before = 0, 0.0  # the step to go on from, and the seconds spent before it
    key = _run_key(model, task, steps, lr, seed, batch, weight_decay)
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_file():
        ck = _load_partial(path, key, device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        start, before, losses = int(ck["step"]), float(ck["seconds"]), list(ck["losses"])
    runner = torch.compile(model) if compile else model  # the same parameters either way
    t0 = time.perf_counter()
    for step in range(start, steps):
        pending.append(recall_step(runner, opt, task, batch, seed * 1_000_003 + step, device))
        sched.step()
        if len(pending) == check_every or step == steps - 1:
            read = torch.stack(pending).tolist()
            pending.clear()
            bad = next((i for i, v in enumerate(read) if not math.isfinite(v)), None)
            losses += read[:bad]
            if bad is not None:
                diverged = True
                break
            if path is not None and step < steps - 1:
                state = {"key": key, "step": step + 1, "seconds": before + time.perf_counter() - t0,
                         "losses": losses, "model": model.state_dict(), "opt": opt.state_dict(),
                         "sched": sched.state_dict()}
                atomic_write(path, lambda f: torch.save(state, f))
    seconds = before + time.perf_counter() - t0
    acc = 0.0 if diverged else recall_accuracy(model, task, n_test, seed=10_000_000 + seed * 100_003, device=device)
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    w = max(1, steps // 50)
    curve = [round(sum(losses[i:i + w]) / len(losses[i:i + w]), 4) for i in range(0, len(losses), w)]
    return {"accuracy": acc, "final_loss": sum(tail) / len(tail), "diverged": diverged, "steps": len(losses),
            "seconds": round(seconds, 2), "params": sum(p.numel() for p in model.parameters()), "resumed_at": start,
            "curve_every": w, "loss_curve": curve}


def choice_loss(result: dict) -> float:
    """What runs at several learning rates are compared by (lower is better): ``final_loss``, the
    training loss of the last tenth of steps. Each of those losses is taken on fresh sequences before
    the step's update, so it is a held-out estimate that never sees the test draw ``accuracy`` is
    measured on; choosing on accuracy itself would bias the chosen run's reported figure upward. A
    diverged or non-finite run is worst (inf)."""
    loss = float(result.get("final_loss", math.nan))
    return math.inf if result.get("diverged") or not math.isfinite(loss) else loss


def best_lr_run(results: list[dict]) -> dict:
    """The result with the lowest ``choice_loss`` among runs at several learning rates (ties: the
    smaller lr, so the choice does not depend on the order runs finished in)."""
    if not results:
        raise ValueError("best_lr_run needs at least one result")
    return min(results, key=lambda r: (choice_loss(r), r["lr"]))


__all__ = ["RecallModel", "RecallModelConfig", "best_lr_run", "choice_loss", "recall_accuracy", "recall_step",
           "train_recall"]
