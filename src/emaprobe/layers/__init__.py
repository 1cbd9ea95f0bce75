"""Context mixers: every way a model may summarise its past, behind one interface.

    mixer = build_mixer("ema", d_model=64)          # or learned_ema, selective, gla, attention
    y, state = mixer(x)                             # x (B, T, D) -> y (B, T, S, D)
    y2, state = mixer(x_next, state)                # continue where the last call stopped

| name          | decay                                         | state           |
|---------------|-----------------------------------------------|-----------------|
| `ema`         | fixed alpha per timescale (the paper's)       | (B, S, D)       |
| `learned_ema` | learned per channel, constant over time       | (B, S, D)       |
| `selective`   | input-dependent a_t = sigmoid(W x_t), gated   | (B, S, D)       |
| `gla`         | input-dependent, per key, on a matrix state   | (B, S, E, D)    |
| `attention`   | causal softmax, one head per timescale        | KV cache        |

Also here: SPEN's predictors (``PREDICTORS``: ``linear``, ``attention``; a new one subclasses
``Predictor``, an input projection ``in_proj`` then ``finish``, and takes ``@register_predictor``), the
KV-cached causal attention calls (growing and preallocated), and the top-k sparse FFN.
"""

from emaprobe.layers.base import (
    MIXERS,
    ContextMixer,
    build_mixer,
    check_alphas,
    mixer_class,
    no_weight_decay,
    register_mixer,
)
from emaprobe.layers.ema import EMAMixer
from emaprobe.layers.learned_ema import LearnedEMAMixer
from emaprobe.layers.selective import SelectiveMixer
from emaprobe.layers.gla import GLAMixer
from emaprobe.layers.attention import (
    AttentionMixer,
    FixedKVCache,
    KVCache,
    cached_attention,
    fixed_kv_attention,
    reserve_kv_cache,
)
from emaprobe.layers.predictors import (
    PREDICTORS,
    AttentionPredictor,
    LinearPredictor,
    Predictor,
    build_predictor,
    register_predictor,
)
from emaprobe.layers.sparse_ffn import ACTIVATIONS, SparseFFN, active_units

__all__ = [
    "ACTIVATIONS",
    "MIXERS",
    "PREDICTORS",
    "AttentionMixer",
    "AttentionPredictor",
    "ContextMixer",
    "EMAMixer",
    "FixedKVCache",
    "GLAMixer",
    "KVCache",
    "LearnedEMAMixer",
    "LinearPredictor",
    "Predictor",
    "SelectiveMixer",
    "SparseFFN",
    "active_units",
    "build_mixer",
    "build_predictor",
    "cached_attention",
    "check_alphas",
    "fixed_kv_attention",
    "mixer_class",
    "no_weight_decay",
    "register_mixer",
    "register_predictor",
    "reserve_kv_cache",
]
