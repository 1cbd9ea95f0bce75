"""Context states to probe: mixers over random embeddings, briefly trained; trained LM blocks.

    emb = random_embeddings(V, D, seed)                      # (V, D), tasks.lag_identity
    mixer = build_probe_mixer("selective", D, alphas)        # any registered mixer
    train_on_lags(mixer, emb, lags, steps=150, ...)          # optional brief training
    feats = mixer_states(mixer, emb, tokens, positions)      # (N, P, S * D), frozen

Brief training ("a simple objective"): the mixer, with fixed random embeddings in
front and one linear head per lag behind, is trained to name x_{t-k} for every lag
k of the probe at once (cross-entropy, AdamW). The heads are then thrown away and a
fresh probe is fit on the frozen states (``probes.linear``). This gives each
learnable mechanism the chance to set its decays and gates for the content the probe
asks for; ``steps = 0`` probes the random initialisation instead.

Attention has no positional encoding of its own (``layers/attention.py``), so a
state built from content alone cannot say which past token sat k steps back. For
the lag probe its inputs get sinusoidal positions added (``sinusoidal_positions``),
the usual fix in a transformer; the scans get none (their decays carry order).

``block_states(model, idx)`` reads what a trained LM holds per block: SPEN's
context H (B, T, S, D) of every block, GPT's residual stream after every block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emaprobe.layers import build_mixer

NEEDS_POSITIONS = ("attention",)


def sinusoidal_positions(T: int, D: int, scale: float = 1.0, device=None) -> torch.Tensor:
    """(T, D) sinusoidal position codes (Vaswani et al. 2017), RMS ``scale / sqrt(D)`` per entry."""
    pos = torch.arange(T, dtype=torch.float32, device=device)[:, None]
    i = torch.arange((D + 1) // 2, dtype=torch.float32, device=device)[None, :]
    ang = pos / (10000.0 ** (2 * i / D))
    pe = torch.zeros(T, D, device=device)
    pe[:, 0::2] = torch.sin(ang)[:, : (D + 1) // 2]
    pe[:, 1::2] = torch.cos(ang)[:, : D // 2]
    return pe * (scale * math.sqrt(2.0 / D))


def build_probe_mixer(name: str, d_model: int, alphas: Sequence[float], **kw) -> nn.Module:
    """A registered mixer with the probe's S timescales; extra keywords it does not take are dropped."""
    return build_mixer(name, d_model, strict=False, alphas=tuple(alphas), **kw)


def _inputs(name: str, emb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    x = emb[tokens]  # (B, T, D)
    if name in NEEDS_POSITIONS:
        x = x + sinusoidal_positions(tokens.shape[1], emb.shape[1], device=x.device)
    return x


@torch.no_grad()
def mixer_states(
    mixer: nn.Module, name: str, emb: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, chunk: int = 32
) -> torch.Tensor:
    """States at the read positions: (N, P, S * D) float32 on CPU, computed ``chunk`` sequences at a time."""
    mixer.eval()
    out = []
    dev = emb.device
    for i in range(0, tokens.shape[0], chunk):
        tok = tokens[i : i + chunk].to(dev)
        y, _ = mixer(_inputs(name, emb, tok))  # (b, T, S, D)
        out.append(y[:, positions.to(dev)].flatten(2).float().cpu())  # (b, P, S D)
    return torch.cat(out)


def train_on_lags(
    mixer: nn.Module,
    name: str,
    emb: torch.Tensor,
    lags: Sequence[int],
    seq_len: int,
    n_read: int,
    steps: int,
    batch: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Train ``mixer`` (not ``emb``) for ``steps`` steps to name x_{t-k}, k in ``lags``, from its state.

    Returns the loss curve (mean CE per lag, nats). A mixer without parameters is left alone.
    """
    params = [p for p in mixer.parameters() if p.requires_grad]
    if steps <= 0 or not params:
        return []
    from emaprobe.tasks.lag_identity import lag_tokens, read_positions

    V, D = emb.shape
    dev = emb.device
    S = mixer.n_scales
    torch.manual_seed(seed)
    heads = nn.Linear(S * D, V * len(lags)).to(dev)
    opt = torch.optim.AdamW(params + list(heads.parameters()), lr=lr, weight_decay=0.0)
    pos = read_positions(seq_len, max(lags), n_read).to(dev)
    lag_t = torch.tensor(list(lags), device=dev)
    mixer.train()
    curve = []
    for step in range(steps):
        # a disjoint seed range from the probe's data (seeds 1e6 + ...)
        tok = lag_tokens(batch, seq_len, V, seed=1_000_000 + seed * 10_000 + step).to(dev)
        y, _ = mixer(_inputs(name, emb, tok))  # (B, T, S, D)
        feats = y[:, pos].flatten(2).float()  # (B, P, S D)
        logits = heads(feats).view(batch, len(pos), len(lags), V)  # (B, P, K, V)
        target = tok[:, pos[:, None] - lag_t[None, :]]  # (B, P, K)
        loss = F.cross_entropy(logits.reshape(-1, V), target.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(loss.item())
    mixer.eval()
    return curve


@torch.no_grad()
def block_states(model: nn.Module, idx: torch.Tensor) -> list[torch.Tensor]:
    """Per block, the state a probe reads, flattened per position: list of (B, T, F).

    SPEN: the context H (B, T, S, D) of each block (``SPEN.block_parts``). GPT: the
    residual stream after each block (B, T, D). Another model kind is a ValueError.
    """
    kind = getattr(model, "kind", None)
    model.eval()
    if kind == "spen":
        return [p["H"].flatten(2).float() for p in model.block_parts(idx)]
    if kind == "gpt":
        T = idx.shape[1]
        x = model.tok_emb(idx) + model.pos_emb(torch.arange(T, device=idx.device))  # (B, T, D)
        out = []
        for blk in model.blocks:
            x, _ = blk(x)
            out.append(x.float())
        return out
    raise ValueError(f"block_states reads SPEN and GPT models; got kind {kind!r} ({type(model).__name__})")


__all__ = ["NEEDS_POSITIONS", "block_states", "build_probe_mixer", "mixer_states", "residual_states", "sinusoidal_positions",
           "train_on_lags"]


@torch.no_grad()
def residual_states(model: nn.Module, idx: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream of a SPEN or GPT model before block 1 and after every block:
    L + 1 tensors (B, T, D). Position 0 is the embedding (GPT: token + position)."""
    kind = getattr(model, "kind", None)
    model.eval()
    T = idx.shape[1]
    if kind == "spen":
        x = model.tok_emb(idx)  # (B, T, D)
        out = [x.float()]
        for p in model.block_parts(idx):
            x = x + p["y"]
            out.append(x.float())
        return out
    if kind == "gpt":
        x = model.tok_emb(idx) + model.pos_emb(torch.arange(T, device=idx.device))
        return [x.float()] + block_states(model, idx)
    raise ValueError(f"residual_states reads SPEN and GPT models; got kind {kind!r} ({type(model).__name__})")
