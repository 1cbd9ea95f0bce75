"""The Triton launchers as ``torch.library`` custom ops: how a ``torch.compile``d model calls them.

Traced through, a launcher's kernels become user-defined Triton kernels in Inductor's graph. The
launchers pass one tensor in several argument slots (an input again where a constexpr switches a
pointer off), and Inductor gave each slot a buffer of its own: in a compiled SPEN-130m step (B2
T8192, one H200) every block's forward wrote the mixer's input five times and every backward wrote
the traces' gradient five times, once per slot over the two launches (Inductor's output code;
``notes/kernels.md``, row "scans as custom ops"). As custom ops the
launchers are opaque to the compiler and run as they do eagerly (cached plans, direct launches),
with no copies around them. Eager calls skip the ops: their dispatch would add host time to every
call (``common.py``).

A custom op has no optional outputs, so each op returns the state nobody asked for (``state``
False) as an empty tensor, and ``run`` hands back None in its place, as the launchers do. The ops
return contiguous tensors, as their fake implementations (shapes for the compiler) say: the
launchers' outputs are fresh allocations, and a segmented plan's state is made contiguous here.

Compiled code's scan calls keep no tensor of their own between calls (``cache.unkept``: their
scratch is made per call), and the EMA's coefficient tensors, which its plans keep, are made when
the compiler traces the op (``implement``'s ``ahead``), not at its first run: under
``torch.compile(mode="reduce-overhead")`` that run allocates into a CUDA graph's private pool, which
may hold nothing past the call (the step failed so, ``notes/kernels.md``, row "the step under CUDA
graphs").

The top-k mask (``topk.py``) is one too, for another reason: it chooses its kernel by the input's
address (rows on 4-byte boundaries take the two-keys-a-word kernel), which a tensor traced by the
compiler does not have; read inside the autograd Function that calls it, it stopped the trace
(SPEN-130m compiled trained a third slower, ``notes/kernels.md``, row "an address under compile");
it returns the code's bits beside the code (empty where the shape and dtype give none), and its
backward reads them through ``topk_unmask``.
The fused cross-entropy's two passes (``cross_entropy.py``) are ops so that a compiled loss runs them
as they run eagerly; so are the tied head and its loss together (``linear_cross_entropy_*``), whose
products read the logits and their gradient with padded rows, a layout the compiler would copy.
"""

from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor

from emaprobe.ops.triton.cache import unkept

# op name -> the launcher it runs: ema.py and linear_scan.py set theirs at import (a module imported
# again re-routes its ops; each op is defined once, here)
_LAUNCHERS: dict[str, Callable] = {}


# op name -> what the op's fake implementation makes on the real device while the compiler traces it
_AHEAD: dict[str, Callable] = {}


def implement(name: str, launcher: Callable, ahead: Callable | None = None) -> None:
    """Route the custom op ``emaprobe::<name>`` to ``launcher``. ``ahead(alphas, device)``, where given, is
    called by the op's fake implementation outside fake mode, so that what a launch keeps (cached) exists
    before compiled code first runs the op (the EMA ops' coefficient tensors)."""
    _LAUNCHERS[name] = launcher
    if ahead is not None:
        _AHEAD[name] = ahead


def _ahead(name: str, alphas: list[float], like: Tensor) -> None:
    make = _AHEAD.get(name)
    if make is not None:
        with torch._subclasses.fake_tensor.unset_fake_temporarily():
            make(tuple(alphas), like.device)


def run(name: str, *args, state: bool) -> tuple:
    """``launcher(*args, state=state)``; under ``torch.compile``, through the custom op ``emaprobe::<name>``."""
    if torch.compiler.is_compiling():
        *outs, last = getattr(torch.ops.emaprobe, name)(*args, state)
        return (*outs, last if state else None)
    return _LAUNCHERS[name](*args, state=state)


def _returned(outs: tuple, like: Tensor) -> tuple:
    # the state: None as empty, and contiguous (a segmented plan's is a view into its segments' states);
    # the other outputs are fresh, contiguous allocations already
    *first, last = outs
    return (*first, like.new_empty(0, dtype=torch.float32) if last is None else last.contiguous())


def _scan(name: str, like: Tensor, *args, state: bool) -> tuple:
    # a scan launcher's call from compiled code: its scratch made for the call (see the module docstring)
    with unkept():
        return _returned(_LAUNCHERS[name](*args, state=state), like)


def _state(shape, state: bool, like: Tensor) -> Tensor:
    return like.new_empty(shape if state else (0,), dtype=torch.float32)


@torch.library.custom_op("emaprobe::ema_traces_fwd", mutates_args=())
def _ema_traces_fwd(x: Tensor, alphas: list[float], h0: Optional[Tensor], state: bool) -> tuple[Tensor, Tensor]:
    return _scan("ema_traces_fwd", x, x, tuple(alphas), h0, state=state)


@_ema_traces_fwd.register_fake
def _(x, alphas, h0, state):
    _ahead("ema_traces_fwd", alphas, x)
    B, T, D = x.shape
    return x.new_empty(B, T, len(alphas), D), _state((B, len(alphas), D), state, x)


@torch.library.custom_op("emaprobe::ema_traces_bwd", mutates_args=())
def _ema_traces_bwd(gh: Tensor, alphas: list[float], g_final: Optional[Tensor], x_dtype: torch.dtype,
                    state: bool) -> tuple[Tensor, Tensor]:
    return _scan("ema_traces_bwd", gh, gh, tuple(alphas), g_final, x_dtype, state=state)


@_ema_traces_bwd.register_fake
def _(gh, alphas, g_final, x_dtype, state):
    _ahead("ema_traces_bwd", alphas, gh)
    B, T, S, D = gh.shape
    return gh.new_empty(B, T, D, dtype=x_dtype), _state((B, S, D), state, gh)


@torch.library.custom_op("emaprobe::linear_scan_fwd", mutates_args=())
def _linear_scan_fwd(a: Tensor, b: Tensor, h0: Optional[Tensor], out_dtype: torch.dtype,
                     state: bool) -> tuple[Tensor, Tensor]:
    return _scan("linear_scan_fwd", b, a, b, h0, out_dtype, state=state)


@_linear_scan_fwd.register_fake
def _(a, b, h0, out_dtype, state):
    shape = torch.broadcast_shapes(a.shape, b.shape)
    return b.new_empty(shape, dtype=out_dtype), _state((shape[0], *shape[2:]), state, b)


@torch.library.custom_op("emaprobe::linear_scan_bwd", mutates_args=())
def _linear_scan_bwd(a: Tensor, gh: Tensor, h: Tensor, h0: Optional[Tensor], g_final: Optional[Tensor],
                     ga_dtype: torch.dtype, gb_dtype: torch.dtype, state: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _scan("linear_scan_bwd", h, a, gh, h, h0, g_final, ga_dtype, gb_dtype, state=state)


@_linear_scan_bwd.register_fake
def _(a, gh, h, h0, g_final, ga_dtype, gb_dtype, state):
    shape = h.shape
    return (h.new_empty(shape, dtype=ga_dtype), h.new_empty(shape, dtype=gb_dtype),
            _state((shape[0], *shape[2:]), state, h))


@torch.library.custom_op("emaprobe::gated_scan_fwd", mutates_args=())
def _gated_scan_fwd(logits: Tensor, x: Tensor, decay_bias: Tensor, gate_bias: Tensor, h0: Optional[Tensor],
                    state: bool) -> tuple[Tensor, Tensor]:
    return _scan("gated_scan_fwd", x, logits, x, decay_bias, gate_bias, h0, state=state)


@_gated_scan_fwd.register_fake
def _(logits, x, decay_bias, gate_bias, h0, state):
    B, T, F = logits.shape[0], logits.shape[1], tuple(logits.shape[3:])
    return x.new_empty(B, T, *F), _state((B, *F), state, x)


@torch.library.custom_op("emaprobe::gated_scan_bwd", mutates_args=())
def _gated_scan_bwd(logits: Tensor, x: Tensor, decay_bias: Tensor, gate_bias: Tensor, gh: Tensor, h: Tensor,
                    h0: Optional[Tensor], g_final: Optional[Tensor],
                    state: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _scan("gated_scan_bwd", h, logits, x, decay_bias, gate_bias, gh, h, h0, g_final, state=state)


@_gated_scan_bwd.register_fake
def _(logits, x, decay_bias, gate_bias, gh, h, h0, g_final, state):
    f32 = torch.float32
    return (logits.new_empty(logits.shape), x.new_empty(x.shape), decay_bias.new_empty(decay_bias.shape, dtype=f32),
            gate_bias.new_empty(gate_bias.shape, dtype=f32), _state((h.shape[0], *h.shape[2:]), state, h))


@torch.library.custom_op("emaprobe::topk_mask", mutates_args=())
def _topk_mask(a: Tensor, k: int, relu: bool) -> tuple[Tensor, Tensor]:
    return _LAUNCHERS["topk_mask"](a, k, relu)


def mask_bits_shape(shape, dtype: torch.dtype, relu: bool) -> tuple[int, ...]:
    """The shape of the top-k mask's bits beside a code of ``shape`` (``topk.py``): (..., F / 8) for the
    pair kernel's inputs (bf16 with relu) with F a multiple of 8, a byte per 4 words; (0,), none,
    elsewhere. By shape and dtype alone, so that the launch and this op's fake implementation agree."""
    if relu and dtype == torch.bfloat16 and shape[-1] % 8 == 0:
        return (*shape[:-1], shape[-1] // 8)
    return (0,)


@_topk_mask.register_fake
def _(a, k, relu):
    return a.new_empty(a.shape), a.new_empty(mask_bits_shape(a.shape, a.dtype, relu), dtype=torch.uint8)


@torch.library.custom_op("emaprobe::topk_unmask", mutates_args=())
def _topk_unmask(gh: Tensor, bits: Tensor) -> Tensor:
    return _LAUNCHERS["topk_unmask"](gh, bits)


@_topk_unmask.register_fake
def _(gh, bits):
    return gh.new_empty(gh.shape)


@torch.library.custom_op("emaprobe::cross_entropy_fwd", mutates_args=())
def _cross_entropy_fwd(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    return _LAUNCHERS["cross_entropy_fwd"](logits, target, ignore_index)


@_cross_entropy_fwd.register_fake
def _(logits, target, ignore_index):
    return logits.new_empty(logits.shape[0], dtype=torch.float32), logits.new_empty(logits.shape[0], dtype=torch.float32)


@torch.library.custom_op("emaprobe::cross_entropy_bwd", mutates_args=())
def _cross_entropy_bwd(logits: Tensor, target: Tensor, lse: Tensor, g: Tensor, ignore_index: int) -> Tensor:
    return _LAUNCHERS["cross_entropy_bwd"](logits, target, lse, g, ignore_index)


@_cross_entropy_bwd.register_fake
def _(logits, target, lse, g, ignore_index):
    return torch.empty_strided(logits.shape, logits.stride(), dtype=logits.dtype, device=logits.device)


@torch.library.custom_op("emaprobe::linear_cross_entropy_fwd", mutates_args=())
def _linear_cross_entropy_fwd(h: Tensor, weight: Tensor, target: Tensor, ignore_index: int,
                              pad_rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _LAUNCHERS["linear_cross_entropy_fwd"](h, weight, target, ignore_index, pad_rows)


@_linear_cross_entropy_fwd.register_fake
def _(h, weight, target, ignore_index, pad_rows):
    N, (V, D) = h.shape[0], weight.shape
    Vp = V + -V % pad_rows
    loss = h.new_empty(N, dtype=torch.float32)
    return loss, torch.empty_like(loss), h.new_empty(N, Vp), weight.new_empty(Vp, D)


@torch.library.custom_op("emaprobe::linear_cross_entropy_bwd", mutates_args=())
def _linear_cross_entropy_bwd(h: Tensor, padded: Tensor, logits: Tensor, target: Tensor, lse: Tensor, g: Tensor,
                              ignore_index: int, V: int) -> tuple[Tensor, Tensor]:
    dh, dw = _LAUNCHERS["linear_cross_entropy_bwd"](h, padded, logits, target, lse, g, ignore_index, V)
    return dh, dw.clone() if dw._base is not None else dw  # an op's outputs own their memory


@_linear_cross_entropy_bwd.register_fake
def _(h, padded, logits, target, lse, g, ignore_index, V):
    return torch.empty_like(h, memory_format=torch.contiguous_format), padded.new_empty(V, padded.shape[1])
