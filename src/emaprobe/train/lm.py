"""The language-model training loop.

``train_lm(model, data, cfg, out_dir)`` trains any ``model(idx (B, T)) -> (logits
(B, T, V), state)`` on a 1-D token stream, minimising ``model.loss(x, y)`` where it has
one (``models.LanguageModel``: the head and the loss in one op) and the logits'
cross-entropy otherwise: AdamW with warmup and cosine decay, gradient clipping and
accumulation, bf16 autocast on GPU, optional ``torch.compile``, and DDP when started
by ``torchrun``. The ingredients follow
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

Under DDP, a rank that raises mid-step records its error for the others and leaves
without the closing barrier; their collective then fails and they stop with
``PeerFailed``, which names that rank and its error. Nobody hangs, and the last
checkpoint (written atomically) stays as it was.

SIGTERM or SIGINT (``timeout``, a scheduler's preemption, Ctrl-C) on a single-process
run finishes the step under way, writes a checkpoint there and raises
``TrainingInterrupted``, so a resume loses no work (in the last step, after the run
finished, so that a caller stops too); a second signal acts at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from emaprobe.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from emaprobe.train.config import COMPILE_MODES, OptimConfig, TrainConfig
from emaprobe.train.dist import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    env_dist_info,
    init_distributed,
    record_failure,
    recorded_failure,
    resolve_device,
)
from emaprobe.train.evaluate import evaluate_lm, lm_loss
from emaprobe.utils.progress import progress_disabled, progress_lines
from emaprobe.train.sampler import BatchSampler
from emaprobe.train.schedule import lr_at
from emaprobe.utils import atomic_write_json, atomic_write_text, config_to_dict, run_record
from emaprobe.utils.config import config_diff
from emaprobe.utils.io import remove_stale_temps

METRICS_NAME = "metrics.jsonl"
RUN_NAME = "run.json"


class TrainingDiverged(ValueError):
    """The loss, gradient norm, validation loss or (at a checkpoint) the weights became NaN or infinite;
    the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT ended the run at a step boundary, after a checkpoint was written there."""


class PeerFailed(RuntimeError):
    """Another DDP rank failed mid-run, so this one stopped too; the last checkpoint is kept."""


@contextlib.contextmanager
def stop_requests(enabled: bool):
    """Yield a dict whose ``"signal"`` is set when SIGTERM or SIGINT arrives; the first one only.

    Off under DDP (a rank that stops alone would hang the others) and off a main thread. The
    training loop stops at a step boundary with it; ``experiments.common.run_pool`` stops
    starting jobs.
    """
    request: dict[str, int | None] = {"signal": None}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, frame):
        request["signal"] = signum
        for sig, prev in old.items():  # a second signal acts at once
            signal.signal(sig, prev)

    for sig in old:
        signal.signal(sig, handler)
    try:
        yield request
    finally:
        for sig, prev in old.items():
            signal.signal(sig, prev)


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


def decays_weight(param: torch.nn.Parameter) -> bool:
    """Whether AdamW decays ``param``: matrices yes; vectors (norms, biases, gains) and
    parameters marked ``_no_weight_decay`` (decay logits and gate biases, see
    ``emaprobe.layers.no_weight_decay``) no."""
    return param.dim() >= 2 and not getattr(param, "_no_weight_decay", False)


def group_settings(o: OptimConfig) -> list[dict[str, Any]]:
    """AdamW's settings for each of ``make_optimizer``'s groups, the decayed one first (lr aside: the
    loop sets it every step)."""
    common = {"betas": (o.beta1, o.beta2), "eps": o.eps}
    return [{**common, "weight_decay": o.weight_decay}, {**common, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with two groups: weight decay on the parameters ``decays_weight`` picks, none on the rest."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if decays_weight(p)]
    no_decay = [p for p in params if not decays_weight(p)]
    settings = group_settings(cfg.optim)
    groups = [{"params": decay, **settings[0]}, {"params": no_decay, **settings[1]}]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, fused=device.type == "cuda" or None)


def clip_and_step(optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter],
                  max_norm: float) -> torch.Tensor:
    """Scale the gradients down to a global norm of at most ``max_norm`` (``math.inf``: never), as
    ``clip_grad_norm_`` does, take ``optimizer``'s step, and return the norm before clipping.

    An optimizer that takes a gradient scale into its own step (fused AdamW, which reads
    ``optimizer.grad_scale`` as ``torch.amp.GradScaler`` sets it: ``_step_supports_amp_scaling``)
    gets the clip factor's inverse there, so its kernel divides each gradient as it reads it;
    ``clip_grad_norm_`` multiplies them all first, one more read and write of every gradient
    (``notes/kernels.md``, row "clipping inside fused AdamW"). Any other optimizer, or one that a
    GradScaler drives, clips with ``clip_grad_norm_`` and then steps.
    """
    params = [p for p in params if p.grad is not None]
    if not getattr(optimizer, "_step_supports_amp_scaling", False) or hasattr(optimizer, "grad_scale"):
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        return norm
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    # clip_grad_norm_'s factor is min(max_norm / (norm + 1e-6), 1); its inverse divides
    optimizer.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale
    return norm


def apply_group_settings(optimizer: torch.optim.Optimizer, o: OptimConfig) -> None:
    """Put this run's betas, eps and weight decay into ``optimizer``'s groups. ``load_state_dict``
    restores the checkpoint's, so without this a resume that changes them would announce the change
    and train on the old values; for unchanged settings it writes the values the groups already hold."""
    for group, settings in zip(optimizer.param_groups, group_settings(o), strict=True):
        group.update(settings)


class NextTokenLoss(torch.nn.Module):
    """The training objective as a module: ``run(x, y)`` is the mean next-token loss, ``model.loss(x, y)``
    where the model has one (``models.LanguageModel``), else the cross-entropy of ``model(x)``'s logits.

    This is what ``wrap_model`` compiles and DDP wraps, so a compiled step is one graph from the tokens to
    the loss. Compiled apart, the model handed its logits' gradient back across the graphs' edge as a
    contiguous tensor, and the head's padded rows (``models.common.tied_logits``) were copied to and fro
    (``notes/kernels.md``, rows "fused cross-entropy in the compiled step" and "the head and the loss in
    one op")."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "loss"):
            return self.model.loss(x, y)
        return lm_loss(self.model, x, y)


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device, compile: bool = False,
               mode: str = "default") -> torch.nn.Module:
    """The module the loop calls, ``run(x, y) -> loss``: the model's ``NextTokenLoss``, compiled if asked
    (``mode``, one of ``config.COMPILE_MODES``), then DDP-wrapped under torchrun."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {list(COMPILE_MODES)}, got {mode!r}")
    if compile and mode == "reduce-overhead" and info.enabled:
        raise ValueError("compile_mode='reduce-overhead' (CUDA graphs) does not run under DDP, whose gradient "
                         "hooks run outside the graphs; use compile_mode='default' with torchrun")
    run = NextTokenLoss(model)
    run = torch.compile(run, mode=mode) if compile else run
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        run = DDP(run, device_ids=[device.index] if device.type == "cuda" else None)
    return run


def accumulate_gradients(
    run: torch.nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    autocast: contextlib.AbstractContextManager | None = None,
) -> torch.Tensor:
    """Backward over ``batches`` (micro-steps) so that .grad holds the gradient of their mean loss
    (``run(x, y)``, the loss module ``wrap_model`` makes).

    Under DDP gradients are all-reduced (averaged over ranks) only on the last
    micro-step. Returns the mean loss of this process's batches, detached.
    """
    n = len(batches)
    total = torch.zeros((), device=batches[0][0].device)
    for i, (x, y) in enumerate(batches):
        skip_sync = n > 1 and i < n - 1 and hasattr(run, "no_sync")
        with run.no_sync() if skip_sync else contextlib.nullcontext():
            with autocast if autocast is not None else contextlib.nullcontext():
                loss = run(x, y) / n
            loss.backward()
        total += loss.detach()
    return total


def _config_dict(cfg: Any) -> Any:
    return config_to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _describe_diff(saved: Any, now: Any) -> str:
    """``"d_model: checkpoint 64, now 128; optim.lr: ..."``: the fields where two config dicts differ."""
    if not (isinstance(saved, dict) and isinstance(now, dict)):
        return f"config: checkpoint {saved!r}, now {now!r}"
    return "; ".join(f"{k}: checkpoint {a!r}, now {b!r}"
                     for k, (a, b) in config_diff(saved, now, absent="<absent>").items())


# a resumed run must read the same batches: these fields fix the data stream
STREAM_FIELDS = ("batch_size", "seq_len", "grad_accum", "seed")


def _model_kind(cfg: Any) -> str | None:
    """The registered model kind ('spen', 'gpt') whose config has exactly the fields of dict ``cfg``, or None."""
    from emaprobe.models import MODEL_KINDS

    if not isinstance(cfg, dict):
        return None
    for kind, cls in MODEL_KINDS.items():
        if set(cfg) == {f.name for f in dataclasses.fields(cls.config_class)}:
            return kind
    return None


def check_out_dir(out: Path, resume: bool, run_files: Sequence[str] = (RUN_NAME, METRICS_NAME),
                  kept: Sequence[str] = ()) -> bool:
    """Whether ``out`` holds a checkpoint to resume; raise where starting there would lose a run.

    A checkpoint needs ``resume``. Without one, ``run_files`` are those of a run stopped before its
    first checkpoint: there is nothing to continue and nothing to lose (the same command makes the
    same run), so ``resume`` starts it over and only a run without ``resume`` is refused, in case the
    folder was named by mistake. ``kept`` files (a model exported at a checkpoint since deleted, to
    save disk) are refused either way: a new run would overwrite them. Both errors name the files.
    """
    if (out / CHECKPOINT_NAME).exists():
        if not resume:
            raise ValueError(f"{out} already holds a checkpoint; pass --resume to continue it, or choose another --out")
        return True

    def present(names: Sequence[str]) -> list[str]:
        return [name + "/" * (out / name).is_dir() for name in names if (out / name).exists()]

    lost = present(kept)
    if lost:
        raise ValueError(
            f"{out} holds a trained run's files ({', '.join(lost + present(run_files))}) but no {CHECKPOINT_NAME}, "
            "so it can neither be resumed nor reused without losing them; choose a new --out, or remove those "
            "files first"
        )
    found = present(run_files)
    if found and not resume:
        raise ValueError(
            f"{out} holds the files of a run stopped before its first checkpoint ({', '.join(found)}); pass "
            "--resume to start it over there, or choose a new --out"
        )
    return False


def _check_data(ckpt: dict[str, Any], data_name: str, path: Path, note: bool = True) -> None:
    """Refuse to resume on other data than the checkpoint's (its batches and validation numbers would mix
    two corpora in one curve). A checkpoint from before the field was stored is resumed with a note."""
    if "data" not in ckpt:
        if note:
            print(f"note: {path} does not record its training data (an older checkpoint); resuming without "
                  "checking that --data and --val are the same", file=sys.stderr, flush=True)
        return
    if ckpt["data"] != data_name:
        raise ValueError(
            f"{path}: the checkpoint was trained on {ckpt['data']!r} but this run reads {data_name!r}; a resumed "
            "run must read the same batches, so resume with the same --data and --val, or start a new --out"
        )


def _check_resume(ckpt: dict[str, Any], train_cfg: dict, model_cfg: Any, info: DistInfo, path: Path) -> str:
    """Raise if the checkpoint cannot continue as this run; return the train settings that changed ('' if none)."""
    saved_model = ckpt.get("model_config")
    was, now = _model_kind(saved_model), _model_kind(model_cfg)
    if was and now and was != now:
        # a field-by-field diff of two kinds of model is all '<absent>'; the kinds say it
        raise ValueError(
            f"{path}: the checkpoint holds a {was.upper()} model but this run's config is a {now.upper()} model; "
            "resume with the config the checkpoint was trained with, or start a new --out"
        )
    saved = ckpt["train_config"]
    diff = sorted(k for k in set(saved) | set(train_cfg) if saved.get(k) != train_cfg.get(k))
    fixed = [k for k in diff if k in STREAM_FIELDS]
    if fixed:
        raise ValueError(
            f"{path}: the checkpoint was made with different {fixed} "
            f"({', '.join(f'{k}={saved.get(k)}' for k in fixed)}); a resumed run must read the same batches, "
            "so resume with the same values or start a new --out"
        )
    if saved_model != model_cfg:
        changed = _describe_diff(saved_model, model_cfg)
        raise ValueError(
            f"{path}: the checkpoint was made with a different model config ({changed}); "
            "resume with the same one or start a new --out"
        )
    if ckpt["world_size"] != info.world_size:
        raise ValueError(
            f"{path}: the checkpoint has {ckpt['world_size']} ranks' sampler states but this run has "
            f"{info.world_size} processes; exact resume needs the same world size"
        )
    return _describe_diff(saved, train_cfg) if diff else ""


def train_lm(
    model: torch.nn.Module,
    data: LMData,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    model_config: Any = None,
    extra_record: dict[str, Any] | None = None,
    on_checkpoint: Callable[[torch.nn.Module, Path, int], None] | None = None,
    quiet: bool = False,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``cfg.steps`` optimizer steps; returns the final metrics.

    ``model_config`` (a dataclass or dict) is recorded in run.json and the checkpoint,
    and checked on resume, as is ``data.name``. ``on_checkpoint(model, out_dir, step)`` runs on
    rank 0 after every checkpoint, and on resume with the checkpoint's weights, so that an export
    a killed or failed run left behind the checkpoint catches up (the CLI exports
    ``save_pretrained`` there, and skips an export already at ``step``). ``stop_after`` ends the
    run after that many steps as if it were killed (tests use it).

    A stop request (SIGTERM, SIGINT) that arrives during the last step is acted on after the
    final checkpoint: ``TrainingInterrupted`` is raised all the same, so a caller running
    several trainings stops too.
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
    clock = {"before": 0.0, "since": 0.0}  # training seconds of earlier processes, and this one's start

    has_ckpt = check_out_dir(out, resume)
    if info.is_main and out.is_dir():  # a run killed while writing a checkpoint left its temporary file
        for path in remove_stale_temps(out):
            print(f"removed {path}: a checkpoint or export a killed run was writing", file=sys.stderr, flush=True)
    # every rank has looked at the folder before rank 0 writes run.json into it below
    barrier(info)
    if resume and not has_ckpt and info.is_main:
        again = (out / METRICS_NAME).exists() or (out / RUN_NAME).exists()
        what = "the run there stopped before its first checkpoint; starting it over" if again else "starting a new run"
        print(f"no checkpoint in {out}; {what}", file=sys.stderr, flush=True)
    if has_ckpt:
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")
        changed = _check_resume(ckpt, train_cfg, model_cfg, info, ckpt_path)
        _check_data(ckpt, data.name, ckpt_path, note=info.is_main)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        apply_group_settings(optimizer, cfg.optim)
        sampler.load_state_dict(ckpt["sampler"][info.rank])
        set_rng_state(ckpt["rng"][info.rank])
        start_step, tokens_seen, metrics = ckpt["step"], ckpt["tokens"], list(ckpt["metrics"])
        clock["before"] = ckpt.get("train_s", 0.0)
        if on_checkpoint is not None and info.is_main:
            on_checkpoint(model, out, start_step)
        if start_step >= cfg.steps:
            # nothing to train: say so, keep every file as it is, and succeed
            note = (f"{ckpt_path} is already at step {start_step}, at or past steps={cfg.steps}; nothing to train "
                    f"(raise --steps above {start_step} to continue it)")
            if info.is_main:
                print(note, flush=True)
            last_val = next((m for m in reversed(metrics) if "val_loss" in m), {})
            last = next((m for m in reversed(metrics) if "loss" in m), {})
            return {"step": start_step, "tokens": tokens_seen, "train": last, "val": last_val,
                    "already_done": True, "note": note, "train_s": clock["before"]}
        if info.is_main:
            # a plain line, not a warning: resuming is what was asked for
            also = (f"; changed train settings: {changed} (the curve will differ from an unbroken run)"
                    if changed else "")
            print(f"resuming {out} from step {start_step} of {cfg.steps}{also}", flush=True)
    if cfg.optim.warmup_steps >= cfg.steps and info.is_main:
        warnings.warn(
            f"optim.warmup_steps={cfg.optim.warmup_steps} >= steps={cfg.steps}: the learning rate never leaves "
            f"warmup and never reaches lr={cfg.optim.lr}; lower --set train.optim.warmup_steps",
            RuntimeWarning,
            stacklevel=2,
        )
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        # lines logged after the checkpoint by a killed run are dropped, so the curve stays exact
        atomic_write_text(metrics_path, "".join(json.dumps(m) + "\n" for m in metrics))
        record = run_record(
            device=device,
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

    run = wrap_model(model, info, device, compile=cfg.compile, mode=cfg.compile_mode)
    writer = _tensorboard(out, cfg, info)
    log_file = open(metrics_path, "a", encoding="utf-8") if info.is_main else None
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * info.world_size
    eval_steps = frozenset(int(s) for s in cfg.eval_steps)
    disable = progress_disabled(quiet, info.is_main)
    lines = progress_lines(quiet, info.is_main)  # a log file gets a line per log step, not a bar's redraws
    bar = tqdm(total=cfg.steps, initial=start_step, unit="step", desc="train", disable=disable, dynamic_ncols=True)
    last: dict[str, Any] = {}
    last_val: dict[str, Any] = {}
    last_ckpt_step = start_step if start_step else None
    t_log, tok_log = time.perf_counter(), tokens_seen
    # (step, loss, grad norm) of the steps whose values are still on the device. Reading a value back
    # waits for every kernel queued so far; read each step, the host could never queue the next step
    # while the GPU runs this one. So they are read back together, at the steps that need them: a log
    # line, an evaluation, a checkpoint, a stop. A run that diverges is still stopped there at its first
    # bad step, before any checkpoint could save the NaN weights (the probes' trainer does the same).
    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def read_back() -> tuple[float, float] | None:
        """The latest pending step's (loss, grad norm), after checking every pending step is finite."""
        if not pending:
            return None
        values = torch.stack([torch.stack((lo.float(), no.float())) for _, lo, no in pending]).tolist()
        steps = [s for s, _, _ in pending]
        pending.clear()
        for at, (loss_value, norm_value) in zip(steps, values):
            if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                raise diverged(at, f"loss {loss_value}, grad norm {norm_value}")
        return values[-1][0], values[-1][1]

    def diverged(at: int, what: str) -> TrainingDiverged:
        """The error for a bad step ``at``: what was not finite, which checkpoint is kept, what to do next."""
        if last_ckpt_step:
            kept, then = f"(step {last_ckpt_step} in {ckpt_path})", "rerun with --resume"
        else:  # a resume would find no checkpoint, only this run's files
            kept, then = "(none was written yet)", f"start again in a new --out (or remove {out} first)"
        return TrainingDiverged(
            f"training diverged at step {at}: {what}; the last good checkpoint is kept {kept}. Lower "
            f"--set train.optim.lr or raise --set train.optim.warmup_steps, then {then}"
        )

    def checkpoint(done: int) -> None:
        """Checkpoint step ``done`` and export it; a step whose update left NaN or infinite weights (from a
        finite loss and gradient, e.g. a tiny optim.eps) is divergence instead, and the last good one stays."""
        nonlocal last_ckpt_step
        read_back()
        if not weights_finite(model):
            raise diverged(done, "the weights are NaN or infinite at its checkpoint, though every loss and grad "
                                 "norm read was finite; check optim.eps and optim.lr")
        _save(model, optimizer, sampler, cfg, train_cfg, model_cfg, info, done, tokens_seen, metrics, ckpt_path,
              train_s(), data.name)
        last_ckpt_step = done
        if on_checkpoint is not None and info.is_main:
            on_checkpoint(model, out, done)
        barrier(info)

    def emit(rec: dict[str, Any]) -> None:
        metrics.append(rec)
        if log_file is not None:
            log_file.write(json.dumps(rec) + "\n")
            log_file.flush()
        if writer is not None:
            for key, value in rec.items():
                if key != "step" and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, rec["step"])

    scorer = torch.compile(model) if cfg.compile else model  # evaluation reads the logits (compiled once, lazily)

    def evaluate() -> dict[str, float]:
        return evaluate_lm(
            scorer, data.val, batch_size=cfg.batch_size, seq_len=cfg.seq_len, max_batches=cfg.eval_batches,
            bytes_per_token=data.bytes_per_token, device=device, autocast=autocast, dist_info=info,
        )

    step = start_step
    clock["since"] = time.perf_counter()

    def train_s() -> float:
        return clock["before"] + time.perf_counter() - clock["since"]

    stop = contextlib.ExitStack()
    request = stop.enter_context(stop_requests(not info.enabled))
    try:
        model.train()
        for step in range(start_step, cfg.steps):
            lr = lr_at(step, cfg.steps, cfg.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = [tuple(t.to(device, non_blocking=True) for t in sampler.next()) for _ in range(cfg.grad_accum)]
            loss = all_reduce_mean(accumulate_gradients(run, batches, autocast), info)
            max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
            grad_norm = clip_and_step(optimizer, model.parameters(), max_norm)
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            pending.append((done, loss, grad_norm))
            tokens_seen += tokens_per_step
            bar.update(1)

            if done % cfg.log_every == 0 or done == cfg.steps:
                loss_value, norm_value = read_back()
                now = time.perf_counter()
                tok_s = (tokens_seen - tok_log) / max(now - t_log, 1e-9)
                t_log, tok_log = now, tokens_seen
                last = {"step": done, "loss": loss_value, "lr": lr, "grad_norm": norm_value,
                        "tokens": tokens_seen, "tokens_per_s": tok_s}
                emit(last)
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
                if lines:
                    print(f"train step {done}/{cfg.steps}  loss {loss_value:.3f}  lr {lr:.2e}  {tok_s:,.0f} tok/s",
                          flush=True)
            at_eval = (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps or done in eval_steps
            if data.val is not None and at_eval:
                read_back()
                ev = evaluate()
                if not math.isfinite(ev["loss"]):
                    raise diverged(done, f"validation loss {ev['loss']}")
                last_val = {"step": done, "val_loss": ev["loss"], "val_ppl": ev["ppl"], "val_bpb": ev["bpb"],
                            "val_tokens": ev["tokens"]}
                emit(last_val)
                if lines:
                    print(f"eval step {done}/{cfg.steps}  val loss {ev['loss']:.3f}  ppl {ev['ppl']:.2f}", flush=True)
                t_log = time.perf_counter()  # evaluation time is not training throughput
            if (cfg.ckpt_every and done % cfg.ckpt_every == 0) or done == cfg.steps:
                checkpoint(done)
            if request["signal"] is not None and done < cfg.steps:
                read_back()
                if last_ckpt_step != done:
                    checkpoint(done)
                raise TrainingInterrupted(
                    f"{signal.Signals(request['signal']).name} at step {done} of {cfg.steps}: checkpoint written to "
                    f"{ckpt_path}"
                )
            if stop_after is not None and done >= stop_after:
                read_back()
                break
    except Exception as err:
        if not info.enabled or isinstance(err, PeerFailed):
            raise
        _raise_distributed_failure(err, info, step, last_ckpt_step, ckpt_path)
    finally:
        stop.close()
        bar.close()
        if log_file is not None:
            log_file.close()
        if writer is not None:
            writer.close()
    if request["signal"] is not None:
        # it came during the last step (or its checkpoint), past the loop's last look: the run is complete,
        # but whoever started it (a CLI, a sweep of several runs) was asked to stop, so it must hear of it
        raise TrainingInterrupted(
            f"{signal.Signals(request['signal']).name} during the last step ({step + 1} of {cfg.steps}): the run "
            f"finished and its checkpoint is written to {ckpt_path}"
        )
    return {"step": last.get("step", start_step), "tokens": tokens_seen, "train": last, "val": last_val,
            "train_s": train_s(), "resumed_from": start_step or None}


def weights_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter is finite: each tensor's max-abs (which NaN and inf reach, and which cannot
    overflow as a sum of squares could), then one read-back. Checkpoint steps only: it waits for the device."""
    params = [p.detach() for p in model.parameters()]
    if not params:
        return True
    peaks = torch._foreach_norm(params, math.inf)
    return bool(torch.stack([x.float() for x in peaks]).max().isfinite().item())


def _raise_distributed_failure(err: Exception, info: DistInfo, step: int, ckpt_step: int | None, path: Path):
    """One rank's error mid-run: say which rank failed, on every rank, instead of letting the others hang.

    The first rank to fail records its error in the store and re-raises it; the others,
    whose collective then fails, raise PeerFailed naming that rank and its error.
    """
    kept = f"the last checkpoint is intact (step {ckpt_step} in {path})" if ckpt_step else "no checkpoint was written"
    other = recorded_failure()
    if other is None:
        record_failure(f"rank {info.rank} at step {step + 1}: {type(err).__name__}: {err}")
        raise err
    if other.startswith(f"rank {info.rank} "):
        raise err
    raise PeerFailed(
        f"rank {info.rank} stopped at step {step + 1} because {other}; {kept}. Fix the cause, then rerun "
        "with --resume"
    ) from err


def _save(model, optimizer, sampler, cfg, train_cfg, model_cfg, info, step, tokens, metrics, path, train_s,
          data_name) -> None:
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
            "data": data_name,  # a resume on other data is refused (_check_data)
            "train_s": train_s,  # wall seconds of training (evaluations included) over every process so far
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
