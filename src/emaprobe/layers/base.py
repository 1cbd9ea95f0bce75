"""The context-mixer interface and its registry.

A context mixer turns a sequence of inputs into S context vectors per position:

    forward(x (B, T, D), state=None) -> (y (B, T, S, D), state)

``y[:, t, s]`` is the s-th summary of the inputs x_{<=t}: an EMA trace at timescale
s for the scans, the s-th attention head's weighted average for ``attention``. The
state carries everything needed to continue: calling ``forward`` on a sequence in
pieces, passing each returned state to the next call, gives the same ``y`` as one
call on the whole sequence. A scan's state is O(1), the float32 tensor h_T
(B, S, D); attention's state is its KV cache.

Register a new mechanism with ``@register_mixer("name")`` on a ``ContextMixer``
subclass; ``build_mixer(name, d_model, **kw)`` then builds it by name.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
from torch import nn

MIXERS: dict[str, type[ContextMixer]] = {}


def check_alphas(alphas: Sequence[float], learned: bool = False) -> tuple[float, ...]:
    """The S timescale coefficients as a tuple, each in (0, 1], the domain of the ops.

    alpha = 1 is a trace with no memory (h_t = x_t). ``learned=True`` is for mixers that
    start a learned decay at logit(1 - alpha), which is finite only for alpha < 1.
    """
    try:
        vals = tuple(float(a) for a in alphas)
    except (TypeError, ValueError) as err:
        raise ValueError(f"alphas must be a sequence of floats, got {alphas!r}") from err
    if not vals:
        raise ValueError("alphas must hold at least one coefficient (one per timescale S)")
    for a in vals:
        if math.isnan(a) or not 0.0 < a <= 1.0:
            raise ValueError(f"alphas must lie in (0, 1]; got {a} in {vals}")
        if learned and a == 1.0:
            raise ValueError(
                f"alphas must lie in (0, 1) for a learned decay, which starts at logit(1 - alpha); got {a} in {vals}"
            )
    return vals


def no_weight_decay(param: nn.Parameter) -> nn.Parameter:
    """Mark a decay or gate parameter so that AdamW leaves it undecayed, and return it.

    Weight decay pulls a parameter towards 0; for a decay logit that means towards a
    decay of 0.5, a timescale of two steps, whatever the data says. Mamba marks its
    ``A_log`` and ``D`` the same way (``_no_weight_decay``); ``emaprobe.train`` reads the mark.
    """
    param._no_weight_decay = True
    return param


class ContextMixer(nn.Module):
    """Base class: ``forward(x (B, T, D), state=None) -> (y (B, T, S, D), state)``.

    Attributes:
        d_model: D, the input width.
        n_scales: S, the number of context vectors per position.
    """

    def __init__(self, d_model: int, n_scales: int):
        super().__init__()
        if int(d_model) <= 0:
            raise ValueError(f"d_model must be positive, got {d_model}")
        if int(n_scales) <= 0:
            raise ValueError(f"n_scales must be positive, got {n_scales}")
        self.d_model = int(d_model)
        self.n_scales = int(n_scales)

    def check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name}: x must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"{name}: x must have shape (B, T, D={self.d_model}), got {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError(f"{name}: x must hold at least one position (T >= 1), got {tuple(x.shape)}")

    def fixed_recurrence(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(a, b), S constants each, where every trace follows y_t^(s) = a_s y_{t-1}^(s) + b_s x_t
        (y_{-1} the state, zero without one); None for a mixer whose context is anything else.

        With a_s != 0, y_{t-1} = (y_t - b_s x_t) / a_s: the previous context is a fixed linear
        function of the current one and the input, with no shift in time. SPEN's block uses
        that to fold its predictor into its bottleneck (``models/spen.py``)."""
        return None

    def traces_and_input(self, x: torch.Tensor, state=None):
        """(y (B, T, S + 1, D), state): ``forward``'s context with x itself as slot S.

        For a consumer that applies one product over [vec(y); x] (SPEN's folded block) instead
        of one over vec(y) and one over x whose results are then added. Here by concatenation;
        a mixer whose kernel can write x beside its traces overrides it."""
        y, state = self(x, state)
        return torch.cat([y, x.to(y.dtype).unsqueeze(2)], dim=2), state

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_scales={self.n_scales}"


def registering(registry: dict, base: type, name_attr: str, name: str):
    """A class decorator that files a ``base`` subclass in ``registry`` under ``name`` and sets
    ``cls.<name_attr> = name``; anything else is a TypeError. The mixers' and predictors' registries."""

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(f"{cls!r} is not a {base.__name__} subclass")
        registry[name] = cls
        setattr(cls, name_attr, name)
        return cls

    return deco


def register_mixer(name: str):
    """Class decorator: make a ``ContextMixer`` buildable as ``build_mixer(name, ...)``."""
    return registering(MIXERS, ContextMixer, "mixer_name", name)


def mixer_class(name: str) -> type[ContextMixer]:
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; choose one of {sorted(MIXERS)}")
    return MIXERS[name]


def build_mixer(name: str, d_model: int, strict: bool = True, **kw) -> ContextMixer:
    """Build the context mixer registered as ``name``.

    ``kw`` go to its constructor. With ``strict=False`` keywords the mixer does not
    take are dropped, so a model can pass one set (alphas, rank, key_dim, backend)
    to whichever mixer its config names.
    """
    cls = mixer_class(name)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    valid = sorted(k for k in params if k not in ("self", "d_model"))
    unknown = sorted(set(kw) - set(valid)) if not takes_any else []
    if unknown:
        if strict:
            raise ValueError(f"mixer {name!r} takes no argument(s) {unknown}; it takes {valid}")
        kw = {k: v for k, v in kw.items() if k in valid}
    return cls(d_model, **kw)
