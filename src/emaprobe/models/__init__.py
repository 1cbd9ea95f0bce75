"""Models: SPEN (the paper's EMA-context LM), the GPT baseline, and the two role learners.

``HebbianRoleLearner`` (zero labels; ``HebbianVote``, several of them voting) and
``BiGRUTagger`` (supervised) assign grammatical roles; the language models below share one
registry.

    model = build_model("spen-tiny", mixer="selective")       # a named config, with overrides
    logits, state = model(idx)                                 # idx (B, T) -> logits (B, T, V)
    model.save_pretrained("run/final");  model = from_pretrained("run/final")
    print(describe())                                          # every named config and its size

Named configs come in matched pairs (same width, depth and vocabulary):

| SPEN        | GPT                   | D   | blocks | V      | use                         |
|-------------|-----------------------|-----|--------|--------|-----------------------------|
| spen-tiny   | gpt-tiny              | 128 | 4      | 10000  | PTB word level, CPU          |
| spen-small  | gpt-small             | 384 | 6      | 50257  | GPT-2 BPE, one GPU           |
| spen-130m   | gpt-130m (= gpt-124m) | 768 | 12     | 50257  | the paper's 130M model       |
"""

from __future__ import annotations

import dataclasses

import torch

from emaprobe.models.common import (
    MODEL_KINDS,
    CompiledDecodeStep,
    ContextLimitError,
    LanguageModel,
    RMSNorm,
    config_from_dict,
    from_pretrained,
    register_model,
    sample_next,
)
from emaprobe.models.bigru import BiGRUConfig, BiGRUTagger
from emaprobe.models.gpt import GPT, GPTConfig
from emaprobe.models.hebbian import HebbianConfig, HebbianRoleLearner, HebbianVote
from emaprobe.models.spen import SPEN, SPENBlock, SPENConfig
from emaprobe.utils import apply_overrides

_GPT_124M = GPTConfig()

MODEL_CONFIGS: dict[str, SPENConfig | GPTConfig] = {
    "spen-tiny": SPENConfig(
        vocab_size=10000, d_model=128, n_layer=4, d_bottleneck=96, d_ff=512, n_head=4, mixer_rank=16
    ),
    "spen-small": SPENConfig(d_model=384, n_layer=6, d_bottleneck=288, d_ff=1536, n_head=6, mixer_rank=32),
    "spen-130m": SPENConfig(),
    "gpt-tiny": GPTConfig(vocab_size=10000, block_size=256, d_model=128, n_layer=4, n_head=4, d_ff=512),
    "gpt-small": GPTConfig(d_model=384, n_layer=6, n_head=6, d_ff=1536),
    "gpt-124m": _GPT_124M,
    "gpt-130m": _GPT_124M,
}


def model_class(config) -> type[LanguageModel]:
    for cls in MODEL_KINDS.values():
        if isinstance(config, cls.config_class):
            return cls
    raise ValueError(
        f"no model takes a {type(config).__name__}; config classes: "
        f"{sorted(c.config_class.__name__ for c in MODEL_KINDS.values())}"
    )


def resolve_config(name_or_config, overrides=None, *, vocab_size: int | None = None, prefix: str = ""):
    """The one config resolution: a named config (``MODEL_CONFIGS``) or a config object, with field
    overrides, then sized to a tokenizer's ``vocab_size`` when given.

    Overrides are typed values (``n_layer=6``) or strings as from a command line
    (``n_layer="6"``, ``alphas="0.5,0.1"``); errors name a field as ``prefix + field``. An
    unknown name or field raises a ValueError listing the valid ones, and so does an explicit
    ``vocab_size`` override that disagrees with ``vocab_size``.
    """
    overrides = dict(overrides or {})
    if isinstance(name_or_config, str):
        if name_or_config not in MODEL_CONFIGS:
            raise ValueError(f"unknown model config {name_or_config!r}; choose one of {sorted(MODEL_CONFIGS)}")
        cfg = MODEL_CONFIGS[name_or_config]
    else:
        cfg = name_or_config
        model_class(cfg)
    as_text = {k: v for k, v in overrides.items() if isinstance(v, str)}
    typed = {k: v for k, v in overrides.items() if not isinstance(v, str)}
    if as_text:
        cfg = apply_overrides(cfg, as_text, prefix=prefix)
    if typed:
        fields = {f.name for f in dataclasses.fields(cfg)}
        unknown = sorted(set(typed) - fields)
        if unknown:
            raise ValueError(f"unknown config field(s) {[prefix + u for u in unknown]}; valid fields: {sorted(fields)}")
        if "alphas" in typed:
            try:
                typed["alphas"] = tuple(typed["alphas"])
            except TypeError as err:
                raise ValueError(f"{prefix}alphas must be a sequence of floats, e.g. (0.5, 0.1, 0.02); "
                                 f"got {typed['alphas']!r}") from err
        cfg = dataclasses.replace(cfg, **typed)
    if vocab_size is not None:
        if "vocab_size" in overrides and cfg.vocab_size != vocab_size:
            raise ValueError(
                f"{prefix}vocab_size={cfg.vocab_size} disagrees with the tokenizer's {vocab_size} ids; drop the override"
            )
        cfg = dataclasses.replace(cfg, vocab_size=vocab_size)
    return cfg


def get_config(name_or_config, **overrides):
    """``resolve_config`` with keyword overrides: ``get_config("spen-tiny", mixer="selective")``."""
    return resolve_config(name_or_config, overrides)


def build_model(name_or_config, **overrides) -> LanguageModel:
    """Build a model from a named config (``MODEL_CONFIGS``) or a config, with overrides."""
    cfg = get_config(name_or_config, **overrides)
    return model_class(cfg)(cfg)


def config_table(names=None, vocab_size: int | None = None, overrides: dict | None = None) -> list[dict]:
    """One row per named config (all by default): name, kind, params, non-embedding params,
    vocab_size, a one-line summary and the resolved config. ``overrides`` are field overrides as
    ``resolve_config`` takes them (``vocab_size`` among them, as a field), ``vocab_size`` a tokenizer's
    size. Models are built on the meta device, so even the 130M configs cost no memory."""
    overrides = dict(overrides or {})
    rows = []
    for name in sorted(MODEL_CONFIGS) if names is None else names:
        cfg = resolve_config(name, overrides, vocab_size=vocab_size)
        with torch.device("meta"):
            model = model_class(cfg)(cfg)
        if isinstance(cfg, SPENConfig):
            shape = (
                f"D={cfg.d_model} L={cfg.n_layer} V={cfg.vocab_size} S={cfg.n_scales} d_b={cfg.d_bottleneck} "
                f"d_ff={cfg.d_ff} k={cfg.k_active} mixer={cfg.mixer} predictor={cfg.predictor}"
            )
        else:
            shape = f"D={cfg.d_model} L={cfg.n_layer} V={cfg.vocab_size} heads={cfg.n_head} d_ff={cfg.d_ff} T<={cfg.block_size}"
        fields = dataclasses.asdict(cfg)
        keys = [k for k in ("mixer", "predictor", "d_model", "n_layer", "n_head", "d_ff") if k in fields]
        rows.append({
            "name": name, "kind": model.kind, "params": model.num_params(),
            "non_embedding_params": model.num_params(exclude_embeddings=True), "vocab_size": cfg.vocab_size,
            "summary": " ".join(f"{k}={fields[k]}" for k in keys), "shape": shape, "config": fields,
        })
    return rows


def describe(name: str | None = None, **overrides) -> str:
    """Parameter counts of one named config (or all), as text. Overrides need a ``name``."""
    if name is None and overrides:
        raise ValueError("describe: overrides apply to one config; pass a name, e.g. describe('spen-130m', mixer='selective')")
    lines = [f"{'config':<11} {'kind':<5} {'params':>9} {'non-emb':>9}  shape"]
    for r in config_table(None if name is None else [name], overrides=overrides):
        lines.append(
            f"{r['name']:<11} {r['kind']:<5} {r['params'] / 1e6:>8.2f}M {r['non_embedding_params'] / 1e6:>8.2f}M  {r['shape']}"
        )
    return "\n".join(lines)


__all__ = [
    "GPT",
    "CompiledDecodeStep",
    "ContextLimitError",
    "BiGRUConfig",
    "BiGRUTagger",
    "HebbianConfig",
    "HebbianRoleLearner",
    "HebbianVote",
    "MODEL_CONFIGS",
    "MODEL_KINDS",
    "SPEN",
    "GPTConfig",
    "LanguageModel",
    "RMSNorm",
    "SPENBlock",
    "SPENConfig",
    "build_model",
    "config_from_dict",
    "config_table",
    "describe",
    "from_pretrained",
    "get_config",
    "model_class",
    "register_model",
    "resolve_config",
    "sample_next",
]
