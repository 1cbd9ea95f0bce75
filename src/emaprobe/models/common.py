"""What every emaprobe language model shares: RMSNorm, the LM interface, save/load.

The interface the trainer, evaluator and generator rely on:

    logits, state = model(idx (B, T) long, state=None)     # logits (B, T, V)
    loss = model.loss(idx, target)                         # what training minimises
    model.config                                           # a frozen dataclass
    model.num_params()
    model.save_pretrained(dir)       # model.safetensors + config.json, both atomic
    from_pretrained(dir)             # rebuilds the right class from config.json
    for tok in model.generate(idx, max_new_tokens, temperature, top_k): ...   # tok (B,)
    model.generate(idx, n, compile=True)   # the per-token step compiled (CUDA graphs on GPU)

``state`` is a list with one entry per block; passing it back continues the
sequence, so feeding tokens one at a time reproduces the full-sequence logits.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from emaprobe.ops import HEAD_ROWS, linear_cross_entropy
from emaprobe.utils import atomic_write_bytes, atomic_write_json, read_json

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MODEL_KINDS: dict[str, type[LanguageModel]] = {}


def padded_linear(h: torch.Tensor, weight: torch.Tensor, multiple: int) -> torch.Tensor:
    """``F.linear(h, weight)`` (..., V) computed with weight's rows padded by zeros to a multiple of
    ``multiple``: the result is a view of the first V columns of a wider product, its rows ``multiple``
    elements apart. Values and gradients are F.linear's."""
    V = weight.shape[0]
    return F.linear(h, F.pad(weight, (0, 0, 0, -V % multiple)))[..., :V]


def tied_logits(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The tied output head: h (..., D) against the embedding weight (V, D) -> logits (..., V).

    Training on CUDA (gradients on), the product runs on the weight padded to a multiple of
    ``HEAD_ROWS`` rows (``padded_linear``): with GPT-2's V = 50,257 every row of the logits and of
    their gradient is then 16-byte aligned. Unpadded, the weight's gradient (logits' gradient
    transposed times h) ran cuBLAS's align-1 kernel: 8.4 ms of a 40.5 ms compiled SPEN-130m step at
    B16 T1024 on one H100, and the step took 33.9 ms padded (``notes/kernels.md``, row "padded
    head"). It is nanoGPT's vocabulary of 50,304, made inside the forward, so the parameters and
    checkpoints keep their V rows. Without gradients (evaluation, generation) the product is plain."""
    if h.is_cuda and torch.is_grad_enabled():
        return padded_linear(h, weight, HEAD_ROWS)
    return F.linear(h, weight)


class RMSNorm(nn.Module):
    """x / rms(x) * g over the last dim, computed in float32 (float64 for float64 x), returned in x's dtype."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(acc)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(acc)).to(x.dtype)


def register_model(cls: type[LanguageModel]) -> type[LanguageModel]:
    """Class decorator: make ``from_pretrained`` rebuild ``cls`` from its ``kind``."""
    MODEL_KINDS[cls.kind] = cls
    return cls


def config_from_dict(config_class: type, values: dict, where: str = "config") -> typing.Any:
    """Rebuild a frozen config dataclass; lists become tuples; unknown keys raise ValueError."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected an object of config fields, got {type(values).__name__}")
    hints = typing.get_type_hints(config_class)
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown config field(s) {unknown}; valid fields: {sorted(names)}")
    kw = {}
    for k, v in values.items():
        if isinstance(v, list) and typing.get_origin(hints[k]) is tuple:
            v = tuple(v)
        kw[k] = v
    try:
        return config_class(**kw)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from err


def check_sizes(config, names: tuple[str, ...]) -> None:
    """Each named field of ``config`` a positive integer: a ValueError naming the field otherwise (a
    float such as 16.5 would pass ``int(x) > 0`` and fail deep inside torch)."""
    for name in names:
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive integer, got {v!r}")


def init_weights(model: nn.Module, std: float, n_layer: int) -> None:
    """GPT-2 / nanoGPT init: N(0, std) for linears and embeddings; projections into the
    residual stream (marked ``residual_out``) get std / sqrt(2 n_layer)."""
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            s = std / math.sqrt(2 * n_layer) if getattr(mod, "residual_out", False) else std
            nn.init.normal_(mod.weight, mean=0.0, std=s)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.Embedding):
            nn.init.normal_(mod.weight, mean=0.0, std=std)


GREEDY_BELOW = torch.finfo(torch.float32).tiny  # sample_next: a smaller temperature (0 included) is greedy


def sample_next(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, generator=None
) -> torch.Tensor:
    """logits (B, V) -> token ids (B,). temperature <= 0 means greedy.

    Each row's max is subtracted before dividing by the temperature, so a tiny temperature sends the
    other logits to -inf at most and never overflows the max to inf (whose softmax is NaN). Below
    float32's smallest normal number a temperature could round to 0 there (0 / 0 for the max), so it is
    greedy, as sampling is in that limit.
    """
    if temperature < GREEDY_BELOW:
        return logits.argmax(-1)
    logits = logits.float()
    logits = (logits - logits.amax(-1, keepdim=True)) / temperature  # (B, V), each row's max now 0
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class LanguageModel(nn.Module):
    """Base of SPEN and GPT, language models with a tied head. Subclasses set ``kind``, ``config_class``
    and ``hidden(idx, state) -> (h, state)``, the normed last hidden state h (B, T, D) that the head reads:

        forward(idx, state)   -> (logits (B, T, V), state)     h against the token embedding
        loss(idx, target)     -> the mean next-token loss       the head and the loss in one op
    """

    kind: str = ""
    config_class: type = object

    def __init__(self, config):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ValueError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    # ------------------------------------------------------------------ checks
    def check_idx(self, idx: torch.Tensor) -> None:
        name = type(self).__name__
        if not isinstance(idx, torch.Tensor):
            raise ValueError(f"{name}: idx must be a torch.Tensor of token ids, got {type(idx).__name__}")
        if idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name}: idx must hold integer token ids (torch.long), got dtype {idx.dtype}")
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(f"{name}: idx must have shape (B, T) with T >= 1, got {tuple(idx.shape)}")
        # a range check syncs a GPU stream every step; on CUDA the embedding asserts instead
        if idx.device.type == "cpu" and not torch.compiler.is_compiling() and idx.numel():
            lo, hi = int(idx.min()), int(idx.max())
            V = self.config.vocab_size
            if lo < 0 or hi >= V:
                raise ValueError(f"{name}: token ids must lie in [0, vocab_size={V}), got range [{lo}, {hi}]")

    def check_state(self, state, n: int) -> list:
        if state is None:
            return [None] * n
        if not isinstance(state, (list, tuple)) or len(state) != n:
            raise ValueError(f"{type(self).__name__}: state must be the list of {n} per-block states this model returned")
        return list(state)

    # ------------------------------------------------------------------ the head
    def hidden(self, idx: torch.Tensor, state: list | None = None) -> tuple[torch.Tensor, list]:
        raise NotImplementedError(f"{type(self).__name__} must define hidden(idx, state) -> (h (B, T, D), state)")

    def forward(self, idx: torch.Tensor, state: list | None = None) -> tuple[torch.Tensor, list]:
        """idx (B, T) -> (logits (B, T, V), the state after idx); ``state`` is what a previous call returned."""
        h, state = self.hidden(idx, state)
        return tied_logits(h, self.tok_emb.weight), state

    def loss(self, idx: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The next-token cross-entropy of ``self(idx)``'s logits against target (B, T), float32, without
        handing the logits out (``ops.linear_cross_entropy``: on CUDA the head's product and the loss are one
        op, and their backward reads the logits' gradient where it was written). What training minimises."""
        h, _ = self.hidden(idx)
        return linear_cross_entropy(h, self.tok_emb.weight, target, reduction)

    # ------------------------------------------------------------------ sizes
    def embedding_params(self) -> int:
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights once); optionally without token/position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embedding_params() if exclude_embeddings else n

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory``, each atomically.

        ``extra`` adds fields to config.json (the trainer's ``checkpoint_step``), which ``from_pretrained``
        does not read; config.json is written after the weights, so a field there never runs ahead of them.
        """
        from safetensors.torch import save

        directory = Path(directory)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_FILE, save(tensors, metadata={"kind": self.kind, "format": "pt"}))
        from emaprobe import __version__

        atomic_write_json(
            directory / CONFIG_FILE,
            {
                "kind": self.kind,
                "config": dataclasses.asdict(self.config),
                "num_params": self.num_params(),
                "emaprobe_version": __version__,
                **(extra or {}),
            },
        )
        return directory

    # ------------------------------------------------------------------ generation
    @property
    def context_limit(self) -> int | None:
        """The most positions one state may hold (GPT's ``block_size``); None: no limit."""
        return None

    @property
    def static_state(self) -> bool:
        """Whether a one-token step keeps every state tensor's shape (a scan's h_T does, a growing KV
        cache does not, a preallocated one does): what ``generate(compile=True)`` needs."""
        return False

    def prompt_window(self, max_new_tokens: int) -> int | None:
        """How many of a prompt's last tokens ``generate`` keeps so that ``max_new_tokens`` new ones fit in
        ``context_limit`` without sliding the window; None: all of them."""
        limit = self.context_limit
        return None if limit is None else limit - max(max_new_tokens - 1, 0)

    def _prefill(self, idx: torch.Tensor):
        """Logits (B, 1, V) at the last prompt position and the state after the prompt, read in
        chunks of ``PREFILL_CHUNK`` positions so that a long prompt's (B, T, V) logits never exist whole."""
        state, logits = None, None
        for start in range(0, idx.shape[1], PREFILL_CHUNK):
            logits, state = self(idx[:, start : start + PREFILL_CHUNK], state)
            logits = logits[:, -1:]
        return logits, state

    def _advance(self, token: torch.Tensor, state):
        """Logits (B, 1, V) after appending ``token`` (B,) to the sequence whose state is ``state``."""
        return self(token.unsqueeze(1), state)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        compile: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Yield ``max_new_tokens`` sampled token ids, each (B,), from the carried state.

        The prompt ``idx`` (B, T) is read once; each new token then costs one
        step: O(1) for scan-context SPEN models, one KV-cache step for attention.
        ``temperature <= 0`` is greedy; ``top_k`` keeps the k likeliest tokens.
        The model runs in eval mode and is put back in its previous mode after.

        A model with a ``context_limit`` (GPT's block_size) never slides its window:
        the prompt keeps its last ``limit - max_new_tokens + 1`` tokens so that every new
        token fits, and asking for more than ``limit`` new tokens raises
        ``ContextLimitError`` before anything is yielded.

        ``compile=True`` runs each step through ``CompiledDecodeStep`` (one compiled
        graph, CUDA graphs on GPU): the same tokens as the eager step, without a Python
        pass through every layer per token. Models whose state grows (``static_state``
        False: SPEN's attention mixer or predictor) warn once and step eagerly; GPT's
        KV cache is preallocated to block_size, so it compiles.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        limit = self.context_limit
        if limit is not None:
            if max_new_tokens > limit:
                raise ContextLimitError(
                    f"{type(self).__name__}: {max_new_tokens} new tokens do not fit in the context of "
                    f"{limit} positions; ask for at most {limit} or raise block_size"
                )
            idx = idx[:, -self.prompt_window(max_new_tokens) :]
        step = self._advance
        if compile:
            if self.static_state:
                # one step object per model, so that later calls replay what the first compiled
                step = self.__dict__.setdefault("_compiled_decode_step", CompiledDecodeStep(self))
            else:
                _warn_once(f"{type(self).__name__}: its state grows per token, so compile=True steps eagerly")
        was_training = self.training
        self.eval()
        try:
            logits, state = self._prefill(idx)
            for i in range(max_new_tokens):
                tok = sample_next(logits[:, -1], temperature, top_k, generator)  # (B,)
                yield tok
                if i + 1 < max_new_tokens:
                    logits, state = step(tok, state)
        finally:
            self.train(was_training)


PREFILL_CHUNK = 1024
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


class ContextLimitError(ValueError):
    """More positions than a model's context holds (GPT's ``block_size``)."""


class CompiledDecodeStep:
    """One generation step, ``(token (B,), state) -> (logits (B, 1, V), state)``, compiled once.

    The recipe is gpt-fast's (pytorch-labs/gpt-fast, ``decode_one_token``): a
    fixed-shape step under ``torch.compile(mode="reduce-overhead")``, which on CUDA
    records the whole step as one CUDA graph and replays it per token, so the host
    launches one graph instead of a few hundred kernels. The state lives in buffers
    of fixed address (``mark_static_address``) that the step overwrites in place,
    as gpt-fast's KV cache does; a graph replay may then read and write them
    without copies. The first call copies the eager state into the buffers. The
    arithmetic is the eager step's, so greedy tokens match it
    (``tests/models/test_decode.py``). Each new (B, dtype, device) compiles again.
    """

    def __init__(self, model: LanguageModel, mode: str | None = None):
        self.model = model
        self.mode = mode
        self.buffers: list | None = None
        self._fn = None

    def _step(self, token: torch.Tensor) -> torch.Tensor:
        logits, new = self.model(token.unsqueeze(1), self.buffers)
        for buf, t in zip(_tensors(self.buffers), _tensors(new), strict=True):
            if t is buf:  # written in place by the step (GPT's KV cache)
                continue
            if buf.dtype != t.dtype or buf.shape != t.shape:  # resolved while tracing: no cost per token
                raise ValueError(
                    f"CompiledDecodeStep: a state tensor changed from {tuple(buf.shape)} {buf.dtype} to "
                    f"{tuple(t.shape)} {t.dtype} in one step; only fixed-shape states can be compiled"
                )
            buf.copy_(t)
        return logits

    def __call__(self, token: torch.Tensor, state):
        if state is not self.buffers:  # the first step after a prefill
            src, bufs = _tensors(state), _tensors(self.buffers)
            if [(t.shape, t.dtype, t.device) for t in src] == [(b.shape, b.dtype, b.device) for b in bufs]:
                for b, t in zip(bufs, src):  # same addresses: the compiled graph is reused
                    b.copy_(t)
            else:
                self.buffers = _clone_state(state)
                for b in _tensors(self.buffers):
                    torch._dynamo.mark_static_address(b)
        if self._fn is None:
            mode = self.mode or ("reduce-overhead" if token.device.type == "cuda" else None)
            self._fn = torch.compile(self._step, mode=mode, fullgraph=True, dynamic=False)
        torch.compiler.cudagraph_mark_step_begin()
        return self._fn(token), self.buffers


def _tensors(state) -> list[torch.Tensor]:
    """The tensors of a state (nested lists, tuples and dicts), in a fixed order."""
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(state) if isinstance(t, torch.Tensor)]


def _clone_state(state):
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, state)


def from_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> LanguageModel:
    """Rebuild a model saved by ``save_pretrained``: the class named in config.json, its weights, in the dtype
    they were saved in (a float64 or bf16 model comes back as one, not cast to float32)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist (expected a folder written by save_pretrained)")
    meta = read_json(cfg_path)
    if not isinstance(meta, dict) or "kind" not in meta or "config" not in meta:
        raise ValueError(f"{cfg_path}: expected an object with 'kind' and 'config'")
    kind = meta["kind"]
    if kind not in MODEL_KINDS:
        raise ValueError(f"{cfg_path}: unknown model kind {kind!r}; choose one of {sorted(MODEL_KINDS)}")
    cls = MODEL_KINDS[kind]
    config = config_from_dict(cls.config_class, meta["config"], where=f"{cfg_path} 'config'")
    with torch.device(device):
        model = cls(config)
    try:
        tensors = load_file(str(w_path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{w_path}: cannot read safetensors ({err})") from err
    missing = sorted(set(model.state_dict()) - set(tensors))
    unexpected = sorted(set(tensors) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"{w_path}: weights do not match {kind} config; missing {missing}, unexpected {unexpected}")
    saved = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(saved) == 1:
        model.to(saved.pop())
    model.load_state_dict(tensors, strict=True)
    return model
