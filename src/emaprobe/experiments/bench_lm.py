"""Benchmark: language-model training throughput, MFU and memory, and generation speed.

Command:   emaprobe bench lm [--device cuda] [--out results/bench]      (default --out runs/bench)
           emaprobe bench lm --quick --device cpu                        the CPU smoke (tiny configs)
           emaprobe bench lm --resume                                    keep the rows already in the JSON
Hardware:  written for one H200 (spen-130m with each mixer and gpt-124m); ``--quick``
           runs spen-tiny and gpt-tiny at short lengths in half a minute to two minutes on 2 CPU cores.
Run time:  with --compile both, most of it is compiling: roughly 20-40 minutes on one H200.
Expected:  SPEN-130m batch-1 greedy generation at 1,000 tokens/s or more with the compiled
           step (``generate(compile=True)``), flat from a 2k to a 32k prompt; the eager step
           measured 86 tokens/s, host-bound (one Python pass through 12 blocks per token).

Training. Each row is one model at one length T with a fixed number of tokens per step
(B = tokens_per_step // T): a full optimizer step as ``train_lm`` takes it (bf16 autocast
on CUDA, ``accumulate_gradients``, fused AdamW clipping in its step: ``clip_and_step``), eager or
under ``torch.compile``.
Warm-up steps (which include compiling) are not timed; each figure is the median over
``repeats`` of ``steps`` timed steps, with CUDA synchronised around each timed region.
GPT's ``block_size`` is raised to T for the benchmark model. ``compile_mode`` is the trainer's
(``TrainConfig.compile_mode``) for every compiled training row: "reduce-overhead" replays the
compiled forward and backward as CUDA graphs, which takes the gaps between kernels out of a step
(one micro-step a step, as here). Generation compiles its own step and ignores it.

MFU, the PaLM definition (Chowdhery et al. 2022, appendix B; nanoGPT's ``estimate_mfu``):

    MFU = flops_per_token * tokens_per_s / peak_flops
    flops_per_token = 6 N + (attention and state terms below)

N counts the parameters that are multiplied, once per token: every ``nn.Linear`` weight
and the tied output head (V x D); not the embedding lookup, positions, norms or biases.
The extra terms, forward + backward (3x the forward), per block:

    GPT, SPEN's attention predictor    12 D T        (QK^T and AV over all T, not halved for the causal mask)
    SPEN's attention mixer             6 S T (E + D) (S heads, keys of width E, values the D inputs)
    SPEN's gla mixer                   12 S E D      (write k^T x and read q S of an E x D state per head)
    ema, learned_ema, selective        0             (O(S D) elementwise per token)

SPEN's top-k FFN counts W2 in full (d_ff x D): the kept units are scattered into a dense
d_ff vector and multiplied densely, so those FLOPs are executed. Where SPEN's block folds its
predictor into its bottleneck (the EMA mixer with the linear predictor, ``SPENBlock.folds``;
``models/spen.py``), the executed and active counts drop the predictor's 6 S D^2 a token a block
and add the weights' product, 6 d_b S D^2 a block over the B T tokens of a step; the model's
``flops_per_token`` (and so MFU) stays the model's own, 6 N. ``flops_per_token_active``
counts only the k kept rows of W2 (k / d_ff of it), the FLOPs a sparse kernel would need.
``flops_per_token_executed`` halves the terms that grow with T (GPT's attention, SPEN's
attention mixer and predictor): training attention is ``is_causal`` SDPA, whose flash and
memory-efficient CUDA kernels skip the masked blocks, about T / 2 keys a query (PyTorch's math
fallback, as on CPU, does not). It is what a step executes (W2 in full), and
``tflops_executed`` = that x tokens/s / 1e12 is the rate a model runs its arithmetic at.

Against GPT (``versus`` in the JSON, the third panel of the plot). Each model's training row
is paired with each GPT row of the same T and mode: ``speed_ratio`` is the model's tokens/s
over GPT's; ``flop_ratio`` is GPT's executed FLOPs a token over the model's, the speed ratio
the two would have at equal TFLOP/s; ``efficiency_ratio`` = speed_ratio / flop_ratio, how much
faster the model runs its arithmetic than GPT runs its own. A speed target of X over GPT
needs efficiency_ratio = X / flop_ratio. ``active_flop_ratio`` divides by the model's
``flops_per_token_active`` instead: the FLOP ratio a kernel that skips the top-k FFN's zeros
would reach, at no loss of efficiency. Rows of older JSONs without the executed count get it
from the config registry by their label (in ``--merge``), where their recorded
``flops_per_token`` still matches; other rows are left out of ``versus``.

``peak_flops`` is ``--peak-tflops`` or the dense bf16 tensor-core peak of the card from
``experiments.common.PEAK_TFLOPS`` (the datasheet figure, e.g. 989 TFLOP/s for H100 SXM and H200; the lab
measured about 790 TFLOP/s achievable in a bf16 matmul on an H200); on CPU it is None and
MFU is null.

Generation. Greedy ``generate`` at batch B after a prompt of P random tokens; the prompt
is read in chunks (``_prefill``) and timed apart; the figure is new tokens per second of
the decode loop (B x new tokens / seconds), median over repeats, eager step or the
compiled one. The compiled step needs a fixed-size state, so models whose state grows
(SPEN's attention mixer or predictor) have eager rows only. GPT's ``block_size`` is
raised to P + new tokens; its KV cache is preallocated to block_size, so it has compiled
rows too, and each decode step (eager or compiled) attends over all block_size slots
through a mask, as gpt-fast does.

The trainer (``--trainer``). A training row times the step alone; users run ``train_lm``
(``emaprobe lm train``), which also draws batches on the host and copies them to the device,
schedules the learning rate, and reads the loss back at its log lines. With ``--trainer`` each
training row's shape is also run through ``train_lm`` itself, on random tokens, for
``steps x (repeats + 1)`` steps logged every ``steps``: its own logged tokens/s, the median of
the windows after the first (which holds the warm-up and compiling). ``trainer_vs_step`` in the
JSON is that over the step's tokens/s, per shape: what the loop costs beyond the step.

The profile (``--profile``). After a training row is timed, ``PROFILE_STEPS`` more steps run under
``torch.profiler``: on CUDA every kernel's device time a step, on CPU every op's own CPU time; the
row's ``profile`` holds their sum (``busy_ms``), the sums by kind (``kernel_group``: matmul,
attention, Inductor's kernels, this package's Triton kernels, the optimizer, foreach ops, other), the
``PROFILE_TOP`` largest with their launches a step, and on CUDA ``idle_ms``, the timed step less the
kernels: the time in which no kernel runs. The profiled steps are not in the timed figure.

Output: ``bench_lm_<card>.json`` (``run_record``: device, git SHA, torch version, and
the rows) and ``bench_lm_<card>.png`` in ``--out``; the JSON is rewritten after every row.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from emaprobe.experiments.common import (card_slug, check_tag, earlier_runs, peak_flops, pyplot, result_source,
                                         save_fig, write_result)
from emaprobe.layers import MIXERS
from emaprobe.models import GPTConfig, SPENConfig, build_model, resolve_config
from emaprobe.train import OptimConfig, TrainConfig
from emaprobe.train.config import COMPILE_MODES
from emaprobe.train.dist import DistInfo
from emaprobe.train.lm import (METRICS_NAME, LMData, accumulate_gradients, autocast_context, clip_and_step,
                                make_optimizer, train_lm, wrap_model)
from emaprobe.utils import atomic_write_json, run_record

MFU_FORMULA = (
    "MFU = flops_per_token * tokens_per_s / peak_flops; flops_per_token = 6 N + attention/state terms "
    "(GPT and attention predictor 12 D T per block, attention mixer 6 S T (E + D), gla 12 S E D, scans 0); "
    "N = every nn.Linear weight plus the tied V x D head; top-k FFN W2 counted in full (executed densely)"
)
COMPILE_CHOICES = ("both", "on", "off")


@dataclass(frozen=True)
class BenchConfig:
    """What ``emaprobe bench lm`` measures. The defaults are the H200 benchmark."""

    configs: tuple[str, ...] = ("spen-130m", "gpt-124m")
    mixers: tuple[str, ...] = tuple(sorted(MIXERS))  # SPEN configs run once per mixer
    seq_lens: tuple[int, ...] = (1024, 4096, 16384)
    tokens_per_step: int = 16384
    steps: int = 10  # timed optimizer steps per repeat
    warmup: int = 3  # untimed steps first (compiling happens here; compiled rows take at least 2)
    repeats: int = 3
    compile: str = "both"
    compile_mode: str = "default"  # torch.compile's mode for the compiled training rows (train.COMPILE_MODES)
    gen_batches: tuple[int, ...] = (1, 32)
    gen_prompts: tuple[int, ...] = (2048, 32768)
    gen_tokens: int = 128  # new tokens timed per repeat
    train: bool = True
    generate: bool = True
    trainer: bool = False  # also time train_lm itself at each training shape (see the docstring)
    profile: bool = False  # also profile each training row's step, kernel by kernel (see the docstring)

    def __post_init__(self):
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"compile must be one of {list(COMPILE_CHOICES)}, got {self.compile!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {list(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.compile_mode != "default" and self.compile == "off":
            raise ValueError(f"--compile-mode {self.compile_mode} applies to compiled training rows; "
                             "--compile off leaves none (give --compile on or both)")
        if not self.mixers:
            raise ValueError(f"mixers must name at least one mixer, got {self.mixers}; choose from {sorted(MIXERS)}")
        unknown = sorted(set(self.mixers) - set(MIXERS))
        if unknown:
            raise ValueError(f"unknown mixer(s) {unknown}; choose from {sorted(MIXERS)}")
        for name in ("tokens_per_step", "steps", "repeats", "gen_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        for name in ("seq_lens", "gen_batches", "gen_prompts"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise ValueError(f"{name} must hold positive sizes, got {getattr(self, name)}")
        if not (self.train or self.generate):
            raise ValueError("--no-train and --no-generate together leave nothing to measure; drop one of them")
        if self.trainer and not self.train:
            raise ValueError("--trainer times the training shapes through train_lm; it needs the training rows "
                             "(drop --no-train)")
        # B = tokens_per_step // T, as documented: a step of fewer tokens than T would be B = 0
        if self.train and self.tokens_per_step < max(self.seq_lens):
            T = max(self.seq_lens)
            raise ValueError(f"--tokens-per-step {self.tokens_per_step} is less than T = {T} of --seq-lens, "
                             f"so B = {self.tokens_per_step} // {T} = 0; give --tokens-per-step {T} or more")
        for name in self.configs:
            resolve_config(name)  # an unknown name lists the valid ones

    @property
    def compile_modes(self) -> tuple[bool, ...]:
        return {"both": (False, True), "on": (True,), "off": (False,)}[self.compile]


def quick_config(**overrides) -> BenchConfig:
    """The CPU smoke: tiny configs, every mixer, short lengths, one repeat, eager only."""
    base = BenchConfig(
        configs=("spen-tiny", "gpt-tiny"), seq_lens=(32, 64), tokens_per_step=256, steps=2, warmup=1, repeats=1,
        compile="off", gen_batches=(1, 2), gen_prompts=(16, 64), gen_tokens=8,
    )
    return dataclasses.replace(base, **overrides)


# ---------------------------------------------------------------------------- FLOPs


def matmul_params(model: nn.Module) -> int:
    """N of 6 N: every nn.Linear weight, plus the tied output head (the token embedding, V x D)."""
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return n + model.tok_emb.weight.numel()


def flops_per_token(model: nn.Module, T: int, n_tokens: int | None = None) -> dict:
    """Training FLOPs per token (forward + backward) at length T; see the module docstring.
    ``n_tokens``: the positions of one call (B T), for SPEN's folded product (none if None)."""
    cfg = model.config
    N = matmul_params(model)
    L, D = cfg.n_layer, cfg.d_model
    folded = 0
    if isinstance(cfg, GPTConfig):
        causal, idle_w2, other = 12 * L * D * T, 0, 0
    else:
        S = cfg.n_scales
        causal = 6 * S * T * (cfg.key_dim + D) * L if cfg.mixer == "attention" else 0
        causal += 12 * D * T * L if cfg.predictor == "attention" else 0
        other = 12 * S * cfg.key_dim * D * L if cfg.mixer == "gla" else 0
        idle_w2 = (cfg.d_ff - cfg.k_active) * D * L  # W2 rows a sparse kernel would skip
        if n_tokens and model.blocks[0].folds(n_tokens):  # the predictor's products go, G's come once a call
            folded = 6 * S * D * D * L - 6 * cfg.d_bottleneck * S * D * D * L // n_tokens
    full = 6 * N + causal + other
    return {"matmul_params": N, "flops_per_token": full, "flops_per_token_active": full - 6 * idle_w2 - folded,
            "flops_per_token_executed": full - causal // 2 - folded}


# ---------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    if device.type == "cuda":  # the last row's model and optimizer leave the card before this one starts
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def model_list(bc: BenchConfig) -> list[tuple[str, object]]:
    """(label, config) pairs: each SPEN config once per mixer, each GPT config once."""
    out = []
    for name in bc.configs:
        cfg = resolve_config(name)
        if isinstance(cfg, SPENConfig):
            out += [(f"{name}/{m}", dataclasses.replace(cfg, mixer=m)) for m in bc.mixers]
        else:
            out.append((name, cfg))
    return out


def _build(cfg, device: torch.device, min_positions: int) -> nn.Module:
    if isinstance(cfg, GPTConfig) and cfg.block_size < min_positions:
        cfg = dataclasses.replace(cfg, block_size=min_positions)
    torch.manual_seed(0)
    if device.type == "cpu":
        return build_model(cfg)
    with torch.device(device):  # initialised on the card: no host copy of 130M parameters
        return build_model(cfg)


def _training_row(part: str, label: str, T: int, B: int, compiled: bool, bc: BenchConfig) -> dict:
    # what a training or trainer row is; a compiled one also names its torch.compile mode
    return {"part": part, "model": label, "T": T, "B": B, "compiled": compiled,
            **({"compile_mode": bc.compile_mode} if compiled else {})}


def bench_train(label: str, cfg, T: int, compiled: bool, bc: BenchConfig, device: torch.device,
                peak: float | None) -> dict:
    """One training row: tokens/s, MFU and peak memory of a full optimizer step."""
    B = bc.tokens_per_step // T  # >= 1: BenchConfig refuses a step shorter than T
    row = _training_row("train", label, T, B, compiled, bc)
    _free(device)
    model = _build(cfg, device, T).train()
    row.update(flops_per_token(model, T, B * T), params=model.num_params())
    tcfg = TrainConfig(device=device.type)
    opt = make_optimizer(model, tcfg, device)
    run = wrap_model(model, DistInfo(), device, compile=compiled, mode=bc.compile_mode)
    autocast = autocast_context(tcfg, device)
    row["dtype"] = _dtype(device)
    gen = torch.Generator(device=device).manual_seed(0)
    seq = torch.randint(0, cfg.vocab_size, (B, T + 1), device=device, generator=gen)
    batch = [(seq[:, :-1], seq[:, 1:])]

    def step() -> None:
        accumulate_gradients(run, batch, autocast)
        clip_and_step(opt, model.parameters(), tcfg.optim.grad_clip)
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(max(bc.warmup, 2) if compiled else bc.warmup):  # the second step may compile again
        step()
    _sync(device)
    row["warmup_s"] = time.perf_counter() - t0
    # CUDA graphs take their memory once, while the warm-up records them, and replays allocate nothing:
    # their peak is the warm-up's
    if device.type == "cuda" and not (compiled and bc.compile_mode == "reduce-overhead"):
        torch.cuda.reset_peak_memory_stats(device)
    rates = []
    for _ in range(bc.repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(bc.steps):
            step()
        _sync(device)
        rates.append(B * T * bc.steps / (time.perf_counter() - t0))
    row["tokens_per_s"] = statistics.median(rates)
    row["step_s"] = B * T / row["tokens_per_s"]
    row["mfu"] = None if peak is None else row["flops_per_token"] * row["tokens_per_s"] / peak
    row["tflops_executed"] = row["flops_per_token_executed"] * row["tokens_per_s"] / 1e12
    row["peak_mem_gib"] = _peak_gib(device)
    if bc.profile:
        row["profile"] = profile_steps(step, device, row["step_s"] * 1e3)
    del run, opt, model
    return row


def bench_trainer(label: str, cfg, T: int, compiled: bool, bc: BenchConfig, device: torch.device) -> dict:
    """One trainer row: ``train_lm``'s own logged tokens/s at a training row's shape (see the docstring)."""
    B = bc.tokens_per_step // T
    row = _training_row("trainer", label, T, B, compiled, bc)
    _free(device)
    model = _build(cfg, device, T)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (4 * B * (T + 1),), generator=gen).numpy()  # host, as a corpus is
    # the lr warms up within the first (untimed) window, so train_lm has no warm-up to warn about
    tcfg = TrainConfig(steps=bc.steps * (bc.repeats + 1), batch_size=B, seq_len=T, log_every=bc.steps,
                       eval_every=0, ckpt_every=0, device=device.type, compile=compiled,
                       compile_mode=bc.compile_mode if compiled else "default",
                       optim=OptimConfig(warmup_steps=bc.steps))
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        t0 = time.perf_counter()
        train_lm(model, LMData(train=tokens, name="random tokens"), tcfg, tmp, quiet=True)
        row["wall_s"] = time.perf_counter() - t0
        logged = [json.loads(line) for line in (Path(tmp) / METRICS_NAME).read_text().splitlines()]
    windows = [m["tokens_per_s"] for m in logged if "tokens_per_s" in m]
    row["windows_tokens_per_s"] = windows  # the first holds the warm-up (and compiling): not in the median
    row["tokens_per_s"] = statistics.median(windows[1:])
    row["step_s"] = B * T / row["tokens_per_s"]
    row["dtype"] = _dtype(device)
    del model
    return row


PROFILE_STEPS = 3  # steps under the profiler, after a row's timed ones
PROFILE_TOP = 25  # kernels (ops on CPU) named in a row's profile, the largest first
# what a kernel's (or a CPU op's) name says it is: the first group with a fragment in the lowered name
KERNEL_GROUPS = (
    ("attention", ("flash", "fmha", "sdpa", "scaled_dot_product", "cudnn")),  # cuDNN runs only SDPA here
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "splitk", "cublas", "aten::mm", "aten::addmm", "aten::bmm",
                "aten::baddbmm")),
    ("optimizer", ("adam",)),
    ("foreach", ("multi_tensor_apply", "aten::_foreach")),
    ("inductor", ("triton_",)),
)


def kernel_group(name: str) -> str:
    """The group of ``KERNEL_GROUPS`` a kernel or op name falls in; "emaprobe" for this package's Triton
    kernels (``_<name>_kernel``); "other" for the rest (copies, fills, PyTorch's elementwise kernels)."""
    low = name.lower()
    for group, fragments in KERNEL_GROUPS:
        if any(f in low for f in fragments):
            return group
    if name.startswith("_") and name.endswith("_kernel"):
        return "emaprobe"
    return "other"


def profile_steps(step: Callable[[], None], device: torch.device, step_ms: float,
                  steps: int = PROFILE_STEPS) -> dict:
    """``steps`` more training steps under ``torch.profiler``: on CUDA each kernel's device time a step,
    on CPU each op's own CPU time a step; their sum (``busy_ms``), the sums by ``kernel_group``, and
    the ``PROFILE_TOP`` largest with their launches a step. On CUDA ``idle_ms`` is the timed step
    (``step_ms``) less ``busy_ms``: the time a step in which no kernel runs (null on CPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    want = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    per: dict[str, list] = {}
    for e in prof.events():
        if e.device_type == want:
            us = e.device_time if cuda else e.self_cpu_time_total
            acc = per.setdefault(e.name, [0.0, 0])
            acc[0] += us / 1e3 / steps
            acc[1] += 1
    busy = sum(ms for ms, _ in per.values())
    groups: dict[str, float] = {}
    for name, (ms, _) in per.items():
        group = kernel_group(name)
        groups[group] = groups.get(group, 0.0) + ms
    top = sorted(per.items(), key=lambda kv: -kv[1][0])[:PROFILE_TOP]
    return {
        "steps": steps, "what": "CUDA kernels, device time" if cuda else "CPU ops, own (self) time",
        "busy_ms": busy, "idle_ms": step_ms - busy if cuda else None,
        "groups": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "top": [{"name": name, "ms": ms, "launches": n / steps, "group": kernel_group(name)}
                for name, (ms, n) in top],
    }


def _short(name: str, width: int = 44) -> str:
    # a kernel's name within width: its start and its end (GEMM names differ in their last letters)
    name = name.removeprefix("void ")
    return name if len(name) <= width else f"{name[:width - 17]}...{name[-14:]}"


def _fmt_profile(p: dict) -> str:
    idle = "" if p.get("idle_ms") is None else f", {p['idle_ms']:.2f} with none running"
    groups = ", ".join(f"{g} {ms:.2f}" for g, ms in p["groups"].items())
    top = ", ".join(f"{_short(k['name'])} {k['ms']:.2f}" for k in p["top"][:5])
    return (f"    profile ({p['what']}): {p['busy_ms']:.2f} ms a step{idle}; {groups}\n"
            f"    largest: {top}")


def _dtype(device: torch.device) -> str:
    """What a row computes in: with the default ``dtype`` (auto), ``autocast_context`` is bf16 on CUDA only."""
    return "bf16 autocast" if device.type == "cuda" else "fp32"


def _print_trainer(pairs: list[dict]) -> None:
    for t in pairs:
        print(f"  trainer {t['model']:<22} {'compiled' if t['compiled'] else 'eager':<8} T={t['T']:<6} "
              f"{t['trainer_tokens_per_s']:,.0f} against the step's {t['step_tokens_per_s']:,.0f} tok/s: "
              f"{t['ratio']:.2f}x")


def trainer_vs_step(rows: list[dict]) -> list[dict]:
    """Each trainer row's tokens/s over the training row of its shape (model, T, mode)."""
    step = {_row_key({**r, "part": "train"}): r for r in rows if r.get("part") == "train" and r.get("tokens_per_s")}
    out = []
    for r in rows:
        s = step.get(_row_key({**r, "part": "train"})) if r.get("part") == "trainer" and r.get("tokens_per_s") else None
        if s is not None:
            out.append({"model": r["model"], "T": r["T"], "compiled": r["compiled"], "trainer_tokens_per_s":
                        r["tokens_per_s"], "step_tokens_per_s": s["tokens_per_s"],
                        "ratio": r["tokens_per_s"] / s["tokens_per_s"]})
    return out


def bench_generate(label: str, cfg, B: int, P: int, compiled: bool, bc: BenchConfig,
                   device: torch.device) -> dict:
    """One generation row: greedy decode tokens/s after a prompt of P tokens at batch B."""
    row: dict = {"part": "generate", "model": label, "B": B, "prompt": P, "new_tokens": bc.gen_tokens,
                 "compiled": compiled}
    _free(device)
    model = _build(cfg, device, P + bc.gen_tokens + 1).eval()
    autocast = autocast_context(TrainConfig(device=device.type), device)
    row["dtype"] = _dtype(device)
    gen = torch.Generator(device=device).manual_seed(0)
    prompt = torch.randint(0, cfg.vocab_size, (B, P), device=device, generator=gen)

    def once(idx: torch.Tensor, n: int) -> tuple[float, float]:
        """(prefill seconds, decode seconds for n - 1 tokens)"""
        with autocast:
            it = model.generate(idx, n, temperature=0.0, compile=compiled)
            _sync(device)
            t0 = time.perf_counter()
            next(it)  # the prefill, then the first token's sampling
            _sync(device)
            t1 = time.perf_counter()
            for _ in it:
                pass
            _sync(device)
            return t1 - t0, time.perf_counter() - t1

    t0 = time.perf_counter()
    for _ in range(2 if compiled else 1):  # compiling, then (on CUDA) recording the graph, on a short prompt:
        once(prompt[:, :8], 4)  # the step's state has the same shape whatever the prompt's length
    # the prefill's own shapes (full chunks, the last chunk) compile their kernels on first use: once
    # untimed, so no repeat's prefill carries that (before this, the H200 row's prefill_s of 1.36 s for
    # SPEN-130m after 2k tokens was the median of two repeats, the first of them cold)
    once(prompt, 2)
    row["warmup_s"] = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prefills, rates = [], []
    for _ in range(bc.repeats):
        pre, dec = once(prompt, bc.gen_tokens + 1)
        prefills.append(pre)
        rates.append(B * bc.gen_tokens / dec)
    row["prefill_s"] = statistics.median(prefills)
    row["tokens_per_s"] = statistics.median(rates)
    row["ms_per_step"] = 1e3 * B / row["tokens_per_s"]
    row["peak_mem_gib"] = _peak_gib(device)
    del model
    return row


def _guarded(fn: Callable[[], dict], base: dict) -> dict:
    """Run one measurement; out of memory becomes a row with an error, not a stopped benchmark.

    Compiled rows start from empty compile caches: each row's model is new, and a shared cache
    would reach dynamo's recompile limit and fall back to eager without a word."""
    if base["compiled"]:
        torch._dynamo.reset()
    try:
        return fn()
    except torch.cuda.OutOfMemoryError as err:
        gc.collect()
        torch.cuda.empty_cache()
        return {**base, "tokens_per_s": None, "error": f"out of memory: {str(err).splitlines()[0]}"}


# ---------------------------------------------------------------------------- against GPT


def config_of(label: str):
    """The config a row's model label names (``model_list``'s inverse), or None for a label
    that names no registered config."""
    name, _, mixer = label.partition("/")
    try:
        cfg = resolve_config(name)
    except ValueError:
        return None
    if isinstance(cfg, SPENConfig) and mixer in MIXERS:
        return dataclasses.replace(cfg, mixer=mixer)
    return None if mixer else cfg


def with_executed(row: dict) -> dict:
    """``row`` with ``flops_per_token_executed`` and ``tflops_executed``, from the config its
    label names where an older run did not record them; unchanged when the label names no
    config or the recorded ``flops_per_token`` differs from today's count (the config moved)."""
    if row.get("part") != "train" or "flops_per_token_executed" in row or not row.get("tokens_per_s"):
        return row
    cfg = config_of(row["model"])
    if cfg is None:
        return row
    f = flops_per_token(_build_meta(cfg), row["T"])
    if f["flops_per_token"] != row.get("flops_per_token"):
        return row
    return {**row, "flops_per_token_executed": f["flops_per_token_executed"],
            "tflops_executed": f["flops_per_token_executed"] * row["tokens_per_s"] / 1e12}


def versus(rows: list[dict]) -> list[dict]:
    """Every non-GPT training row against every GPT row of the same T and mode (see the module
    docstring): speed, executed-FLOP and efficiency ratios."""
    train = [r for r in rows if r.get("part") == "train" and r.get("tokens_per_s")
             and r.get("flops_per_token_executed")]
    is_gpt = {m: isinstance(config_of(m), GPTConfig) for m in {r["model"] for r in train}}
    out = []
    for g in (r for r in train if is_gpt[r["model"]]):
        for r in train:
            if is_gpt[r["model"]] or (r["T"], r["compiled"]) != (g["T"], g["compiled"]):
                continue
            speed = r["tokens_per_s"] / g["tokens_per_s"]
            flop = g["flops_per_token_executed"] / r["flops_per_token_executed"]
            active = g["flops_per_token_executed"] / r.get("flops_per_token_active", r["flops_per_token_executed"])
            out.append({"model": r["model"], "versus": g["model"], "T": r["T"], "compiled": r["compiled"],
                        "speed_ratio": speed, "flop_ratio": flop, "efficiency_ratio": speed / flop,
                        "active_flop_ratio": active,
                        "tflops_executed": r["flops_per_token_executed"] * r["tokens_per_s"] / 1e12,
                        "versus_tflops_executed": g["flops_per_token_executed"] * g["tokens_per_s"] / 1e12})
    return sorted(out, key=lambda v: (v["versus"], v["model"], v["compiled"], v["T"]))


def _print_versus(pairs: list[dict]) -> None:
    if not pairs:
        return
    print("against GPT: speed = tokens/s over GPT's; FLOPs = GPT's executed FLOPs a token over the model's "
          "(the speed at equal TFLOP/s; in brackets, with the top-k FFN's zeros skipped); efficiency = speed / FLOPs")
    for v in pairs:
        mode = "compiled" if v["compiled"] else "eager"
        print(f"  {v['model']:<22} vs {v['versus']:<10} {mode:<8} T={v['T']:<6} speed {v['speed_ratio']:.2f}x  "
              f"FLOPs {v['flop_ratio']:.2f}x ({v['active_flop_ratio']:.2f}x)  efficiency {v['efficiency_ratio']:.2f}x  "
              f"({v['tflops_executed']:.1f} vs {v['versus_tflops_executed']:.1f} TFLOP/s executed)")


# ---------------------------------------------------------------------------- report


def _mode(r: dict) -> str:
    """A row's mode as printed and plotted: eager, compiled, or compiled with a torch.compile mode named."""
    if not r["compiled"]:
        return "eager"
    return "compiled" if r.get("compile_mode", "default") == "default" else f"compiled ({r['compile_mode']})"


def _fmt_row(r: dict) -> str:
    mode = _mode(r)
    if r.get("error"):
        return f"{r['model']:<22} {mode:<8} {r['error']}"
    mem = "" if r.get("peak_mem_gib") is None else f"  peak {r['peak_mem_gib']:.1f} GiB"
    if r["part"] == "train":
        mfu = "" if r.get("mfu") is None else f"  MFU {100 * r['mfu']:5.1f}%"
        prof = "" if "profile" not in r else "\n" + _fmt_profile(r["profile"])
        return (f"{r['model']:<22} {mode:<8} T={r['T']:<6} B={r['B']:<4} {r['tokens_per_s']:>12,.0f} tok/s"
                f"{mfu}{mem}{prof}")
    if r["part"] == "trainer":
        return (f"{r['model']:<22} {mode:<8} T={r['T']:<6} B={r['B']:<4} {r['tokens_per_s']:>12,.0f} tok/s "
                f"through train_lm")
    return (f"{r['model']:<22} {mode:<8} B={r['B']:<3} prompt={r['prompt']:<6} {r['tokens_per_s']:>10,.1f} tok/s"
            f"  ({r['ms_per_step']:.2f} ms/step, prefill {r['prefill_s']:.2f} s){mem}")


def card_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def plot(rows: list[dict], card: str, path: Path, pairs: list[dict] | None = None) -> None:
    """Training tokens/s against T, and decode tokens/s against the prompt length, log scales;
    with ``pairs`` (``versus``), a third panel: each model's speed over GPT against T, beside
    the speed it would have at GPT's TFLOP/s (the FLOP ratio); with profiled training rows, a last
    panel of bars: each row's step by kind of kernel (``_plot_profile``)."""
    plt = pyplot()

    ok = [r for r in rows if r.get("tokens_per_s")]
    parts = [p for p in ("train", "generate") if any(r["part"] == p for r in ok)] or ["train"]
    parts += ["versus"] if pairs else []
    profiled = [r for r in ok if r["part"] == "train" and r.get("profile")]
    parts += ["profile"] if profiled else []
    fig, panels = plt.subplots(1, len(parts), figsize=(6.5 * len(parts), 5), squeeze=False)
    axes = {p: ax for p, ax in zip(parts, panels[0])}
    models = list(dict.fromkeys(r["model"] for r in ok))
    for i, m in enumerate(models):
        color = f"C{i % 10}"
        for compiled in (False, True):
            style = "o--" if compiled else "o-"
            tr = sorted((r for r in ok if r["part"] == "train" and r["model"] == m and r["compiled"] == compiled),
                        key=lambda r: r["T"])
            if tr:
                axes["train"].plot([r["T"] for r in tr], [r["tokens_per_s"] for r in tr], style, color=color,
                                   label=f"{m} {'compiled' if compiled else 'eager'}")
            loop = sorted((r for r in ok if r["part"] == "trainer" and r["model"] == m and r["compiled"] == compiled),
                          key=lambda r: r["T"])
            if loop:
                axes["train"].plot([r["T"] for r in loop], [r["tokens_per_s"] for r in loop], style.replace("o", "s"),
                                   color=color, alpha=0.5,
                                   label=f"{m} {'compiled' if compiled else 'eager'}, through train_lm")
            for B, marker in zip(sorted({r["B"] for r in ok if r["part"] == "generate"}), "osd^v"):
                ge = sorted((r for r in ok if r["part"] == "generate" and r["model"] == m
                             and r["compiled"] == compiled and r["B"] == B), key=lambda r: r["prompt"])
                if ge:
                    axes["generate"].plot([r["prompt"] for r in ge], [r["tokens_per_s"] for r in ge],
                                          style.replace("o", marker), color=color,
                                          label=f"{m} B={B} {'compiled' if compiled else 'eager'}")
    for key in dict.fromkeys((v["model"], v["versus"], v["compiled"]) for v in pairs or []):
        vs = sorted((v for v in pairs if (v["model"], v["versus"], v["compiled"]) == key), key=lambda v: v["T"])
        color, name = f"C{models.index(key[0]) % 10}", f"{key[0]} / {key[1]}"
        mode = "compiled" if key[2] else "eager"
        axes["versus"].plot([v["T"] for v in vs], [v["speed_ratio"] for v in vs], "o--" if key[2] else "o-",
                            color=color, label=f"{name} {mode}: measured")
        axes["versus"].plot([v["T"] for v in vs], [v["flop_ratio"] for v in vs], "x:", color=color,
                            label=f"{name} {mode}: at equal TFLOP/s")
    if profiled:
        _plot_profile(axes["profile"], profiled)
    titles = {"train": ("sequence length T (fixed tokens per step)", "training", "tokens/s (median)"),
              "generate": ("prompt length", "greedy generation", "tokens/s (median)"),
              "versus": ("sequence length T", "training speed over GPT", "tokens/s over GPT's")}
    for part, ax in axes.items():
        if part == "profile":
            continue
        xlabel, title, ylabel = titles[part]
        ax.set_xscale("log", base=2)
        if part == "versus":  # ratios from zero, with GPT's own speed drawn at 1
            ax.axhline(1.0, color="0.5", linewidth=0.8)
            ax.set_ylim(bottom=0)
        else:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    modes = sorted({r.get("compile_mode", "default") for r in rows if r.get("compiled")} - {"default"})
    fig.suptitle(f"emaprobe language models on {card}"
                 + (f" (compiled rows: torch.compile mode {', '.join(modes)})" if modes else ""))
    fig.tight_layout()
    save_fig(fig, path, dpi=110)


def _plot_profile(ax, rows: list[dict]) -> None:
    """One horizontal bar a profiled training row: its kernels' time a step by kind, then (CUDA) the
    time with no kernel running."""
    kinds = list(dict.fromkeys(g for r in rows for g in r["profile"]["groups"]))
    labels = [f"{r['model']} T={r['T']} {_mode(r)}" for r in rows]
    bars = [(kind, f"C{i % 10}", [r["profile"]["groups"].get(kind, 0.0) for r in rows]) for i, kind in enumerate(kinds)]
    if any(r["profile"].get("idle_ms") is not None for r in rows):  # CUDA: the time with no kernel running
        bars.append(("no kernel running", "0.85", [max(r["profile"].get("idle_ms") or 0.0, 0.0) for r in rows]))
    left = [0.0] * len(rows)
    for kind, color, ms in bars:
        ax.barh(labels, ms, left=left, color=color, label=kind)
        left = [a + b for a, b in zip(left, ms)]
    ax.invert_yaxis()
    ax.set_xlabel(f"ms a step ({rows[0]['profile']['what']})")
    ax.set_title("where a training step goes")
    ax.legend(fontsize=6)


def run(bc: BenchConfig, device: str | torch.device = "cpu", out_dir: str | Path | None = "runs/bench",
        peak_tflops: float | None = None, tag: str | None = None, resume: bool = False) -> dict:
    """Measure every row of ``bc`` on ``device``; write JSON (after each row) and the PNG to ``out_dir``,
    as ``bench_lm_<card>[_<tag>]``.

    ``resume``: where that JSON exists, keep its rows measured on this card under the same
    settings (an error names any setting that differs) and measure only the rest, so a grid
    longer than one sitting is the same command run again. A kept row names its ``source``
    (file, git SHA, time, torch), as in ``merge``; rows that ended in an error are measured again."""
    check_tag(tag)
    if peak_tflops is not None and not (math.isfinite(peak_tflops) and peak_tflops > 0):  # NaN fails both
        raise ValueError(f"--peak-tflops must be a finite number > 0 (TFLOP/s), got {peak_tflops}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch")
    card = card_name(dev)
    slug = card_slug(card) + (f"_{tag}" if tag else "")
    peak, source = peak_flops(dev, peak_tflops)
    models = model_list(bc)
    plan: list[tuple[dict, Callable[[], dict]]] = []
    if bc.train:
        for label, cfg in models:
            for T in bc.seq_lens:
                for compiled in bc.compile_modes:
                    base = {"part": "train", "model": label, "T": T, "B": bc.tokens_per_step // T,
                            "compiled": compiled}
                    plan.append((base, lambda l=label, c=cfg, T=T, k=compiled: bench_train(l, c, T, k, bc, dev, peak)))
                    if bc.trainer:
                        plan.append(({**base, "part": "trainer"},
                                     lambda l=label, c=cfg, T=T, k=compiled: bench_trainer(l, c, T, k, bc, dev)))
    if bc.generate:
        for label, cfg in models:
            static = _build_meta(cfg).static_state
            for P in bc.gen_prompts:
                for B in bc.gen_batches:
                    for compiled in bc.compile_modes:
                        if compiled and not static:
                            continue  # a growing state steps eagerly anyway (see the docstring)
                        base = {"part": "generate", "model": label, "B": B, "prompt": P, "compiled": compiled}
                        plan.append((base, lambda l=label, c=cfg, B=B, P=P, k=compiled:
                                     bench_generate(l, c, B, P, k, bc, dev)))
    rows: list[dict] = []
    out = None if out_dir is None else Path(out_dir)
    kept, earlier = {}, []
    if resume:
        if out is None:
            raise ValueError("--resume needs an output folder to resume from")
        kept, earlier = _resumable(out / f"bench_lm_{slug}.json", card, peak, bc)

    def record() -> dict:
        return run_record(
            device=dev, benchmark="lm", card=card, device_type=dev.type, bench_config=dataclasses.asdict(bc),
            peak_flops=peak, peak_flops_source=source, mfu_formula=MFU_FORMULA,
            torch_threads=torch.get_num_threads(), **({"resumed_from": earlier} if earlier else {}),
            rows=rows, versus=versus(rows), **({"trainer_vs_step": trainer_vs_step(rows)} if bc.trainer else {}),
        )

    todo = sum(_row_key(base) not in kept for base, _ in plan)
    print(f"bench lm on {card}: {len(plan)} measurements ({len(plan) - todo} kept from the earlier run, "
          f"{todo} to measure); peak FLOP/s {peak} ({source})" if kept else
          f"bench lm on {card}: {len(plan)} measurements; peak FLOP/s {peak} ({source})", flush=True)
    for i, (base, fn) in enumerate(plan, 1):
        row = kept.get(_row_key(base))
        if row is not None:
            rows.append(row)
            print(f"[{row['part']} {i}/{len(plan)}] kept ({str(row['source'].get('git_sha'))[:10]}): {_fmt_row(row)}",
                  flush=True)
            continue
        row = _guarded(fn, base)
        rows.append(row)
        print(f"[{row['part']} {i}/{len(plan)}] {_fmt_row(row)}", flush=True)
        if out is not None:
            atomic_write_json(out / f"bench_lm_{slug}.json", record())
    result = record()
    _print_versus(result["versus"])
    _print_trainer(result.get("trainer_vs_step", []))
    if out is not None:
        _write(result, out / f"bench_lm_{slug}")
    return result


def _resumable(path: Path, card: str, peak: float | None, bc: BenchConfig) -> tuple[dict, list[str]]:
    """The rows of an earlier ``run`` at ``path`` that a resumed one keeps, by row key, and the
    git SHAs of the runs they came from; ({}, []) where there is no file yet."""
    if not path.is_file():
        print(f"--resume: no {path} yet, so every row is measured", flush=True)
        return {}, []
    old = _read_result(path, "--resume: ")
    if (old.get("card"), old.get("peak_flops")) != (card, peak):
        raise ValueError(f"--resume: {path} has card {old.get('card')!r} (peak {old.get('peak_flops')}), this run "
                         f"{card!r} (peak {peak}); pick another --tag or drop --resume")
    was, now = old.get("bench_config", {}), json.loads(json.dumps(dataclasses.asdict(bc)))
    # a setting newer than the file (``trainer``) counts as its default there
    default = {f.name: json.loads(json.dumps(f.default)) for f in dataclasses.fields(BenchConfig)}
    differ = sorted(k for k in now if was.get(k, default[k]) != now[k])
    if differ:
        raise ValueError(f"--resume: {path} was measured with other settings ({', '.join(differ)}: "
                         + "; ".join(f"{k} {was.get(k)!r}, now {now[k]!r}" for k in differ)
                         + "); rerun with those settings, pick another --tag, or drop --resume")
    src = result_source(old, path.name)
    kept = {_row_key(r): {**r, "source": r.get("source", src)} for r in old["rows"] if not r.get("error")}
    return kept, earlier_runs(old)


def _read_result(path: Path, prefix: str = "") -> dict:
    """A ``bench lm`` result file, or a ValueError (after ``prefix``) saying why it is not one."""
    try:
        res = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{prefix}{path}: not a readable JSON file ({err})") from err
    if not isinstance(res, dict) or res.get("benchmark") != "lm" or "rows" not in res:
        raise ValueError(f"{prefix}{path}: not a bench lm result (no benchmark 'lm' with rows)")
    return res


def _write(result: dict, stem: Path) -> None:
    """The result's JSON and its plot, ``stem``.json and .png."""
    write_result(stem, result, lambda path: plot(result["rows"], result["card"], path, result.get("versus")))


def _build_meta(cfg) -> nn.Module:
    with torch.device("meta"):
        return build_model(cfg)


def _row_key(r: dict) -> tuple:
    if r["part"] in ("train", "trainer"):
        return (r["part"], r["model"], r["T"], r["compiled"])
    return ("generate", r["model"], r["B"], r["prompt"], r["compiled"])


def merge(paths: list[str | Path], out_dir: str | Path = "runs/bench", tag: str = "merged") -> dict:
    """One result from several ``bench lm`` JSONs of one card: a grid measured in parts.

    Each row names its ``source`` (file, git SHA, time, torch; a row that already names one, from
    a resumed run or an earlier merge, keeps it) and the record lists every
    source's argv and settings. A row measured in two files is an error naming both, so the
    choice is the user's. ``missing_train`` names the rows of the default training grid
    (``BenchConfig.seq_lens``, eager and compiled) that the merged models lack; rows at
    other lengths are kept as extras."""
    check_tag(tag)
    if len(paths) < 2:
        raise ValueError("--merge needs two or more bench lm JSON files")
    sources, rows, seen = [], [], {}
    card = None
    for p in map(Path, paths):
        res = _read_result(p)
        if card is None:
            card, device_type, peak, peak_source = (res["card"], res["device_type"], res["peak_flops"],
                                                    res["peak_flops_source"])
        elif res["card"] != card or res["peak_flops"] != peak:
            raise ValueError(f"{p}: card {res['card']!r} (peak {res['peak_flops']}) differs from "
                             f"{paths[0]}'s {card!r} (peak {peak}); merge results of one card")
        src = {k: res.get(k) for k in ("git_sha", "time_utc", "torch", "argv", "bench_config")}
        sources.append({"file": p.name, **src})
        for r in res["rows"]:
            key = _row_key(r)
            if key in seen:
                raise ValueError(f"{key} is measured in both {seen[key]} and {p.name}: leave one file out")
            seen[key] = p.name
            rows.append({**with_executed(r), "source": r.get("source", result_source(res, p.name))})
    trained = [r for r in rows if r["part"] == "train" and r.get("tokens_per_s")]
    have = {_row_key(r) for r in trained}
    models = list(dict.fromkeys(r["model"] for r in trained))
    missing = [{"model": m, "T": T, "compiled": c} for m in models for T in BenchConfig.seq_lens
               for c in (False, True) if ("train", m, T, c) not in have]
    result = run_record(benchmark="lm", card=card, device_type=device_type, peak_flops=peak,
                        peak_flops_source=peak_source, mfu_formula=MFU_FORMULA, merged_from=sources,
                        missing_train=missing, rows=rows, versus=versus(rows),
                        **({"trainer_vs_step": ts} if (ts := trainer_vs_step(rows)) else {}))
    print(f"merged {len(rows)} rows from {len(sources)} files; {len(missing)} training rows missing")
    for m in missing:
        print(f"  missing: {m['model']} T={m['T']} {'compiled' if m['compiled'] else 'eager'}")
    _print_versus(result["versus"])
    _print_trainer(result.get("trainer_vs_step", []))
    _write(result, Path(out_dir) / f"bench_lm_{card_slug(card)}_{tag}")
    return result
