"""Language-model evaluation: loss, perplexity and bits per byte.

Every target of the split is scored once, in consecutive non-overlapping windows of
``seq_len`` tokens (``emaprobe.data.eval_batches``); every model starts each window
from an empty state, so a recurrent model and a transformer see the same context.

    loss = mean next-token cross-entropy, nats
    ppl  = exp(loss)
    bpb  = loss * tokens / (bytes * ln 2) = loss / (bytes_per_token * ln 2)

``bytes_per_token`` is the split's UTF-8 bytes over its token count, so bpb is exact
when the whole split is evaluated (``max_batches=0``) and an estimate on a prefix.
Under DDP each rank takes every ``world_size``-th batch and the sums are reduced.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from tqdm import tqdm

from emaprobe.data.tokens import eval_batches
from emaprobe.ops.losses import cross_entropy
from emaprobe.train.dist import DistInfo, all_reduce_sum
from emaprobe.utils.progress import progress_disabled


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of ``model(x)``'s logits against ``y``; x, y (B, T). Computed in float32
    (``emaprobe.ops.cross_entropy``: on CUDA two Triton passes over the logits in their own dtype)."""
    logits, _ = model(x)  # (B, T, V)
    return cross_entropy(logits, y, reduction=reduction)


@torch.no_grad()
def evaluate_lm(
    model: torch.nn.Module,
    tokens: Any,
    *,
    batch_size: int = 16,
    seq_len: int = 128,
    max_batches: int = 0,
    bytes_per_token: float | None = None,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
    dist_info: DistInfo | None = None,
    quiet: bool = True,
) -> dict[str, float]:
    """Loss (nats/token), perplexity and bits per byte of ``model`` on ``tokens``.

    ``max_batches`` > 0 scores only the first ``max_batches * batch_size * seq_len``
    targets. Returns ``{"loss", "ppl", "bpb", "tokens"}``; bpb is NaN without
    ``bytes_per_token``. ``quiet=False`` shows a progress bar.
    """
    info = dist_info or DistInfo()
    device = torch.device(device)
    if len(tokens) < 2:
        raise ValueError(f"the evaluation split has {len(tokens)} tokens; it needs at least 2")
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, count)
    cap = max_batches * batch_size * seq_len if max_batches else None
    n_targets = min(len(tokens) - 1, cap or len(tokens))
    n_batches = math.ceil(n_targets // seq_len / batch_size) + (1 if n_targets % seq_len else 0)
    batches = eval_batches(tokens, batch_size, seq_len, max_tokens=cap)
    disable = progress_disabled(quiet, info.is_main)
    for i, (x, y) in enumerate(tqdm(batches, total=n_batches, desc="eval", unit="batch", disable=disable, leave=False)):
        if i % info.world_size != info.rank:
            continue
        x, y = x.to(device), y.to(device)
        with autocast if autocast is not None else contextlib.nullcontext():
            losses = lm_loss(model, x, y, reduction="sum")
        total[0] += losses.double()
        total[1] += y.numel()
    all_reduce_sum(total, info)
    model.train(was_training)
    loss = (total[0] / total[1]).item()
    out = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": int(total[1].item())}
    out["bpb"] = loss / (bytes_per_token * math.log(2)) if bytes_per_token else float("nan")
    return out
