"""The language-model training loop.

``train_lm(model, data, cfg, out_dir)`` trains any ``model(idx (B, T)) -> (logits
(B, T, V), state)`` on a 1-D token stream: AdamW with warmup and cosine decay,
gradient clipping and accumulation, bf16 autocast on GPU, optional
``torch.compile``, and DDP when started by ``torchrun``. The ingredients follow
nanoGPT's ``train.py`` (Karpathy); the checkpoint and resume logic is this
project's own.

Out-folder layout (``OUT``)::

    run.json        run_record: argv, git SHA, versions, seed, resolved configs
    metrics.jsonl   one line per logged step (step, loss, lr, grad_norm, tokens/s)
                    and per evaluation (step, val_loss, val_ppl, val_bpb)
    checkpoint.pt   the full training state, for --resume (atomic)
    tb/             TensorBoard events, when train.tensorboard is on

A run killed at any moment and resumed with ``resume=True`` continues from the last
checkpoint and reproduces the unbroken run's loss curve bit for bit on CPU: the
checkpoint carries every RNG state and each rank's sampler, the learning rate is a
pure function of the step, and the metrics file is cut back to the checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from emaprobe.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from emaprobe.train.config import TrainConfig
from emaprobe.train.dist import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    env_dist_info,
    init_distributed,
    resolve_device,
)
from emaprobe.train.evaluate import evaluate_lm, lm_loss
from emaprobe.utils.progress import progress_disabled
from emaprobe.train.sampler import BatchSampler
from emaprobe.train.schedule import lr_at
from emaprobe.utils import atomic_write_json, atomic_write_text, config_to_dict, run_record

METRICS_NAME = "metrics.jsonl"
RUN_NAME = "run.json"


class TrainingDiverged(ValueError):
    """The loss or gradient norm became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class LMData:
    """Token streams for one run. ``bytes_per_token`` is the validation split's, for bpb."""

    train: Any  # 1-D integer sequence: numpy array, memmap or torch tensor
    val: Any | None = None
    bytes_per_token: float | None = None
    name: str = ""


def autocast_context(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU (``dtype=auto`` or ``bf16``), plain fp32 on CPU unless ``bf16`` is asked for."""
    use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; matrices are decayed, vectors (norms, biases, gains) are not."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    o = cfg.optim
    return torch.optim.AdamW(
        groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=device.type == "cuda" or None
    )


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device, compile: bool = False) -> torch.nn.Module:
    """The module the loop calls: compiled if asked, then DDP-wrapped under torchrun."""
    run = torch.compile(model) if compile else model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        run = DDP(run, device_ids=[device.index] if device.type == "cuda" else None)
    return run


def accumulate_gradients(
    run: torch.nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    autocast: contextlib.AbstractContextManager | None = None,
) -> torch.Tensor:
    """Backward over ``batches`` (micro-steps) so that .grad holds the gradient of their mean loss.

    Under DDP gradients are all-reduced (averaged over ranks) only on the last
    micro-step. Returns the mean loss of this process's batches, detached.
    """
    n = len(batches)
    total = torch.zeros((), device=batches[0][0].device)
    for i, (x, y) in enumerate(batches):
        skip_sync = n > 1 and i < n - 1 and hasattr(run, "no_sync")
        with run.no_sync() if skip_sync else contextlib.nullcontext():
            with autocast if autocast is not None else contextlib.nullcontext():
                loss = lm_loss(run, x, y) / n
            loss.backward()
        total += loss.detach()
    return total


def _config_dict(cfg: Any) -> Any:
    return config_to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# a resumed run must read the same batches: these fields fix the data stream
STREAM_FIELDS = ("batch_size", "seq_len", "grad_accum", "seed")


def _check_resume(ckpt: dict[str, Any], train_cfg: dict, model_cfg: Any, info: DistInfo, path: Path) -> None:
    saved = ckpt["train_config"]
    diff = sorted(k for k in set(saved) | set(train_cfg) if saved.get(k) != train_cfg.get(k))
    fixed = [k for k in diff if k in STREAM_FIELDS]
    if fixed:
        raise ValueError(
            f"{path}: the checkpoint was made with different {fixed} "
            f"({', '.join(f'{k}={saved.get(k)}' for k in fixed)}); a resumed run must read the same batches, "
            "so resume with the same values or start a new --out"
        )
    if diff and info.is_main:
        warnings.warn(
            f"resuming {path} with changed train settings {diff}; the curve will differ from an unbroken run",
            RuntimeWarning,
            stacklevel=3,
        )
    if ckpt.get("model_config") != model_cfg:
        raise ValueError(f"{path}: the checkpoint was made with a different model config; resume with the same one")
    if ckpt["world_size"] != info.world_size:
        raise ValueError(
            f"{path}: the checkpoint has {ckpt['world_size']} ranks' sampler states but this run has "
            f"{info.world_size} processes; exact resume needs the same world size"
        )


def train_lm(
    model: torch.nn.Module,
    data: LMData,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    model_config: Any = None,
    extra_record: dict[str, Any] | None = None,
    on_checkpoint: Callable[[torch.nn.Module, Path], None] | None = None,
    quiet: bool = False,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``cfg.steps`` optimizer steps; returns the final metrics.

    ``model_config`` (a dataclass or dict) is recorded in run.json and the checkpoint,
    and checked on resume. ``on_checkpoint(model, out_dir)`` runs on rank 0 after every
    checkpoint (the CLI exports ``save_pretrained`` there). ``stop_after`` ends the
    run after that many steps as if it were killed (tests use it).
    """
    out = Path(out_dir)
    info = env_dist_info()
    device = resolve_device(cfg.device, info)
    init_distributed(info, device)
    train_cfg = _jsonable(config_to_dict(cfg))
    model_cfg = _jsonable(_config_dict(model_config))
    ckpt_path = out / CHECKPOINT_NAME
    metrics_path = out / METRICS_NAME

    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    sampler = BatchSampler(data.train, cfg.batch_size, cfg.seq_len, seed=cfg.seed, rank=info.rank)
    autocast = autocast_context(cfg, device)
    start_step, tokens_seen, metrics = 0, 0, []

    if ckpt_path.exists() and not resume:
        raise ValueError(f"{out} already holds a checkpoint; pass --resume to continue it, or choose another --out")
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")
        _check_resume(ckpt, train_cfg, model_cfg, info, ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        sampler.load_state_dict(ckpt["sampler"][info.rank])
        set_rng_state(ckpt["rng"][info.rank])
        start_step, tokens_seen, metrics = ckpt["step"], ckpt["tokens"], list(ckpt["metrics"])
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        # lines logged after the checkpoint by a killed run are dropped, so the curve stays exact
        atomic_write_text(metrics_path, "".join(json.dumps(m) + "\n" for m in metrics))
        record = run_record(
            seed=cfg.seed,
            world_size=info.world_size,
            device_used=str(device),
            resumed_from_step=start_step if start_step else None,
            train=train_cfg,
            model=model_cfg,
            data=data.name,
            num_params=sum(p.numel() for p in model.parameters()),
            **(extra_record or {}),
        )
        atomic_write_json(out / RUN_NAME, record)

    run = wrap_model(model, info, device, compile=cfg.compile)
    writer = _tensorboard(out, cfg, info)
    log_file = open(metrics_path, "a", encoding="utf-8") if info.is_main else None
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * info.world_size
    disable = progress_disabled(quiet, info.is_main)
    bar = tqdm(total=cfg.steps, initial=start_step, unit="step", desc="train", disable=disable, dynamic_ncols=True)
    last: dict[str, Any] = {}
    last_val: dict[str, Any] = {}
    last_ckpt_step = start_step if start_step else None
    t_log, tok_log = time.perf_counter(), tokens_seen

    def emit(rec: dict[str, Any]) -> None:
        metrics.append(rec)
        if log_file is not None:
            log_file.write(json.dumps(rec) + "\n")
            log_file.flush()
        if writer is not None:
            for key, value in rec.items():
                if key != "step" and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, rec["step"])

    def evaluate() -> dict[str, float]:
        return evaluate_lm(
            run, data.val, batch_size=cfg.batch_size, seq_len=cfg.seq_len, max_batches=cfg.eval_batches,
            bytes_per_token=data.bytes_per_token, device=device, autocast=autocast, dist_info=info,
        )

    try:
        model.train()
        for step in range(start_step, cfg.steps):
            lr = lr_at(step, cfg.steps, cfg.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = [tuple(t.to(device, non_blocking=True) for t in sampler.next()) for _ in range(cfg.grad_accum)]
            loss = all_reduce_mean(accumulate_gradients(run, batches, autocast), info)
            max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            loss_value, norm_value = loss.item(), grad_norm.item()
            if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                where = f"step {last_ckpt_step} in {ckpt_path}" if last_ckpt_step else "none was written yet"
                raise TrainingDiverged(
                    f"training diverged at step {step + 1}: loss {loss_value}, grad norm {norm_value}; "
                    f"the last good checkpoint is kept ({where}). Lower --set train.optim.lr or raise "
                    "--set train.optim.warmup_steps, then rerun with --resume"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            tokens_seen += tokens_per_step
            bar.update(1)

            if done % cfg.log_every == 0 or done == cfg.steps:
                now = time.perf_counter()
                tok_s = (tokens_seen - tok_log) / max(now - t_log, 1e-9)
                t_log, tok_log = now, tokens_seen
                last = {"step": done, "loss": loss_value, "lr": lr, "grad_norm": norm_value,
                        "tokens": tokens_seen, "tokens_per_s": tok_s}
                emit(last)
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
            at_eval = (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps
            if data.val is not None and at_eval:
                ev = evaluate()
                last_val = {"step": done, "val_loss": ev["loss"], "val_ppl": ev["ppl"], "val_bpb": ev["bpb"],
                            "val_tokens": ev["tokens"]}
                emit(last_val)
                t_log = time.perf_counter()  # evaluation time is not training throughput
            if (cfg.ckpt_every and done % cfg.ckpt_every == 0) or done == cfg.steps:
                _save(model, optimizer, sampler, cfg, train_cfg, model_cfg, info, done, tokens_seen, metrics, ckpt_path)
                last_ckpt_step = done
                if on_checkpoint is not None and info.is_main:
                    on_checkpoint(model, out)
                barrier(info)
            if stop_after is not None and done >= stop_after:
                break
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
        if writer is not None:
            writer.close()
    return {"step": last.get("step", start_step), "tokens": tokens_seen, "train": last, "val": last_val}


def _save(model, optimizer, sampler, cfg, train_cfg, model_cfg, info, step, tokens, metrics, path) -> None:
    # every rank's sampler and RNG state is gathered so that each one resumes its own stream
    samplers = all_gather_objects(sampler.state_dict(), info)
    rngs = all_gather_objects(rng_state(), info)
    if not info.is_main:
        return
    save_checkpoint(
        path,
        {
            "step": step,
            "tokens": tokens,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sampler": samplers,
            "rng": rngs,
            "train_config": train_cfg,
            "model_config": model_cfg,
            "world_size": info.world_size,
            "seed": cfg.seed,
            "metrics": list(metrics),
        },
    )


def _tensorboard(out: Path, cfg: TrainConfig, info: DistInfo):
    if not cfg.tensorboard or not info.is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ValueError("train.tensorboard=true needs TensorBoard: pip install tensorboard") from err
    return SummaryWriter(log_dir=str(out / "tb"))
