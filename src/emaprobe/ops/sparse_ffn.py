"""Top-k FFN: ``y = W2 topk(act(W1 c))`` with k of d_ff units kept per token.

Symbols:
    N      tokens, the leading dims of c flattened
    d_in   input width;  d_ff hidden units;  d_out output width
    k      units kept per token (k-winners-take-all)
    vals   the k kept activations per token          (N, k)
    idx    their unit indices                        (N, k), int64
    W1     ``w_up``   (d_ff, d_in);   W2 ``w_down`` (d_out, d_ff)   (``nn.Linear`` layout)

Three forms, one result:

``dense``   ``torch.topk``, a scatter of vals into a zero (N, d_ff) code, and W2 times the
            code in full. It spends d_ff / k times the needed multiply-adds on zeros, but it
            is one large GEMM, which tensor cores run at full rate; it is the naive reference.
``gather``  y[n] = sum_j vals[n, j] W2[:, idx[n, j]]: a weighted sum of k columns of W2,
            fused into one ``F.embedding_bag`` call (the table is W2^T, the bags are the
            rows of idx, ``per_sample_weights`` are vals). This is the gather-and-scale step
            of sparse mixture-of-experts and of embedding lookups, used here for the
            winners of a k-WTA layer (Ahmad & Scheinkman 2019, "How can we be so dense?",
            keep the k winners and let only they carry signal and gradient). Its backward
            touches only the k kept units too: dL/dW2 scatters vals * dy into k columns per
            token, and dL/dvals[n, j] = <dy[n], W2[:, idx[n, j]]> is a sampled dot product
            (SDDMM), computed on CPU with ``torch.sparse.sampled_addmm``.
``mask``    the dense GEMM on a code made in one pass: ``topk_mask`` keeps the k largest of
            each row in place (on CUDA one Triton program a row, ``ops/triton/topk.py``; a
            stable sort elsewhere) with no indices, no topk and no scatter, and applies the
            relu in the same pass (``relu=True``), so relu(W1 c) is never written out. Its
            backward is dh where h != 0, exact for ``relu`` (a kept zero has relu' = 0), so it
            takes relu only.

``topk_ffn(..., impl="auto")`` picks one through ``resolve_ffn_impl``: ``gather`` on CPU,
where it is measured faster (``emaprobe bench ffn``), ``mask`` on CUDA for relu, and ``dense``
otherwise (gather on an H200 at the 130m widths: 0.22x dense forward, 0.10x
forward+backward; ``results/bench/ffn_nvidia-h200.json``), and whenever k == d_ff.

Ties at the k-th value: ``torch.topk`` keeps any of them, ``topk_mask`` the lowest indices; the
two differ only where a row's k-th and (k+1)-th values are equal.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


def _activation(act: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[act]


def _compute_dtype(vals: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    """The dtype ``F.linear(h, w)`` would compute in: autocast's when it is on, else promoted."""
    dev = vals.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(vals.dtype, w.dtype)


# ---------------------------------------------------------------------------- the two down projections


def dense_topk_down(vals: torch.Tensor, idx: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """vals, idx (..., k) -> W2 h (..., d_out), h the zero (..., d_ff) code holding vals at idx."""
    h = vals.new_zeros(*vals.shape[:-1], w_down.shape[1]).scatter_(-1, idx, vals)  # (..., d_ff), no extra copy
    return F.linear(h, w_down)


def _sddmm_ok(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


def _bag_weight_grad_ok(t: torch.Tensor) -> bool:
    # embedding_bag's per-sample-weight backward has no CUDA kernel for bf16/fp16 (torch 2.11)
    return t.device.type == "cpu" or t.dtype in (torch.float32, torch.float64)


def _sampled_dots(gy: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """out[n, j] = <gy[n], w[:, idx[n, j]]>: gy (N, d_out), w (d_out, d_ff), idx (N, k) -> (N, k)."""
    N, k = idx.shape
    crow = torch.arange(0, N * k + 1, k, device=idx.device, dtype=idx.dtype)
    with warnings.catch_warnings():  # "sparse CSR support is in beta", printed once per process
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(
            crow, idx.reshape(-1), gy.new_zeros(N * k), (N, w.shape[1]), check_invariants=False
        )
        out = torch.sparse.sampled_addmm(pattern, gy, w, beta=0.0)
    return out.values().view(N, k)


class _GatherDown(torch.autograd.Function):
    """y = embedding_bag(idx, W2^T, vals): forward and backward touch only the k kept units."""

    @staticmethod
    def forward(ctx, vals, idx, w):  # vals (N, k), idx (N, k), w (d_out, d_ff)
        ctx.save_for_backward(vals, idx, w)
        # embedding_bag reads table rows; a contiguous W2^T (one d_out x d_ff copy) is ~20x
        # faster on CPU than the strided view
        return F.embedding_bag(idx, w.t().contiguous(), per_sample_weights=vals, mode="sum")  # (N, d_out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):  # gy (N, d_out)
        vals, idx, w = ctx.saved_tensors
        need_vals, _, need_w = ctx.needs_input_grad
        gy = gy.to(vals.dtype).contiguous()
        sddmm = need_vals and _sddmm_ok(gy)
        # where neither kernel has the dtype, dvals = (dy W2) at idx: one dense (N, d_ff) GEMM, the
        # dense form's own cost for this term (the dW2 and forward savings stay)
        dense_vals = need_vals and not sddmm and not _bag_weight_grad_ok(gy)
        g_vals = g_w = None
        if need_w or (need_vals and not sddmm and not dense_vals):
            # embedding_bag's own backward: dW2^T scattered by index, and (off CPU) dvals
            with torch.enable_grad():
                wt = w.detach().t().contiguous().requires_grad_(need_w)
                v = vals.detach().requires_grad_(need_vals and not sddmm and not dense_vals)
                y = F.embedding_bag(idx, wt, per_sample_weights=v, mode="sum")
                wanted = [t for t in (wt, v) if t.requires_grad]
                grads = list(torch.autograd.grad(y, wanted, gy))
            if need_w:
                g_w = grads.pop(0).t()  # (d_out, d_ff)
            if v.requires_grad:
                g_vals = grads.pop(0)  # (N, k)
        if sddmm:
            g_vals = _sampled_dots(gy, w, idx)  # its CPU kernel is ~3x embedding_bag's per-weight loop
        elif dense_vals:
            g_vals = (gy @ w).gather(1, idx.long())  # (N, d_ff) -> (N, k)
        return g_vals, None, g_w


def _bag_index(idx: torch.Tensor) -> torch.Tensor:
    # int32 bags (and CSR rows, whose offsets reach N k): embedding_bag's CPU backward sorts the
    # indices, 3x faster in int32 (0.15 s against 0.45 s at N=4096, k=185, d_ff=3072, 2 cores)
    return idx.int() if idx.numel() < 2**31 else idx


def gather_topk_down(vals: torch.Tensor, idx: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """vals, idx (..., k) -> sum_j vals[..., j] W2[:, idx[..., j]] (..., d_out), without the zeros."""
    lead, k = vals.shape[:-1], vals.shape[-1]
    dtype = _compute_dtype(vals, w_down)
    with torch.autocast(vals.device.type, enabled=False):  # dtypes set by hand, as autocast would
        y = _GatherDown.apply(vals.reshape(-1, k).to(dtype), _bag_index(idx.reshape(-1, k)), w_down.to(dtype))
    return y.view(*lead, w_down.shape[0])


# ---------------------------------------------------------------------------- the mask form

# dtypes the Triton mask kernel takes on CUDA (ops/triton/topk.py); anything else takes the reference
_TRITON_MASK_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _check_k(k, width: int, name: str) -> None:
    # an int (a bool is not one: True would run as k = 1 in one form and fail in torch.topk in the others)
    if isinstance(k, bool) or not isinstance(k, (numbers.Integral, torch.SymInt)):
        raise ValueError(f"k must be an int, got {k!r} ({type(k).__name__})")
    if not 1 <= k <= width:
        raise ValueError(f"k must lie in [1, {name}{width}], got {k}")


def topk_mask_reference(a: torch.Tensor, k: int) -> torch.Tensor:
    """a (..., F) -> h (..., F): the k largest of each row kept, zeros elsewhere; of values tied
    at the k-th, the lowest indices are kept (a stable descending sort). Any dtype and device."""
    idx = torch.sort(a, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(a).scatter(-1, idx, a.gather(-1, idx))


class _TopkMask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, k, relu):
        bits = None
        if a.is_cuda and a.dtype in _TRITON_MASK_DTYPES:
            from emaprobe.ops.triton.topk import topk_mask_bits  # needs Triton: loaded on first CUDA use

            h, bits = topk_mask_bits(a, k, relu)
        else:
            h = topk_mask_reference(F.relu(a) if relu else a, k)
        # the bits, 1 a unit (the backward reads them, not h's 16), or h itself: the tensor W2's GEMM saves
        ctx.save_for_backward(bits if bits is not None and bits.numel() else h)
        return h

    @staticmethod
    def backward(ctx, gh):
        (saved,) = ctx.saved_tensors
        if saved.dtype == torch.uint8:  # the bits (a code h is a float, as its input)
            from emaprobe.ops.triton.topk import unmask_triton

            return unmask_triton(gh, saved), None, None
        # with relu too: h != 0 exactly where a unit is kept and a > 0, where relu's slope is 1
        return gh.masked_fill(saved == 0, 0), None, None


def topk_mask(a: torch.Tensor, k: int, relu: bool = False) -> torch.Tensor:
    """The k-WTA code of a (..., F): the k largest of each row kept in place, zeros elsewhere; with
    ``relu``, the code of relu(a), in the same one pass (the relu is never written out). The
    gradient flows to the kept nonzero entries (for relu codes: exactly topk's)."""
    _check_k(k, a.shape[-1], "")
    return _TopkMask.apply(a, k, relu)


# ---------------------------------------------------------------------------- registry and op


def _dense(z: torch.Tensor, act: str, k: int, w_down: torch.Tensor) -> torch.Tensor:
    return dense_topk_down(*topk_code(_activation(act)(z), k), w_down)


def _gather(z: torch.Tensor, act: str, k: int, w_down: torch.Tensor) -> torch.Tensor:
    return gather_topk_down(*topk_code(_activation(act)(z), k), w_down)


def _mask(z: torch.Tensor, act: str, k: int, w_down: torch.Tensor) -> torch.Tensor:
    # relu only (IMPL_ACTS), applied inside the mask's one pass
    return F.linear(topk_mask(z, k, relu=True), w_down)


# each form: (z = W1 c (..., d_ff), the activation's name, k, W2) -> y (..., d_out) = W2 topk(act(z))
FFN_IMPLS: dict[str, Callable[[torch.Tensor, str, int, torch.Tensor], torch.Tensor]] = {
    "dense": _dense,
    "gather": _gather,
    "mask": _mask,
}
# what "auto" takes per device type for relu; anything not named here, or another activation, gets "dense"
AUTO_IMPL: dict[str, str] = {"cpu": "gather", "cuda": "mask"}
# forms that take only some activations, and which
IMPL_ACTS: dict[str, tuple[str, ...]] = {"mask": ("relu",)}


def available_ffn_impls() -> list[str]:
    return sorted(FFN_IMPLS) + ["auto"]


def check_ffn_impl(impl: str, act: str = "relu") -> str:
    """``impl`` if it names a form (or "auto") that takes activation ``act``; else a named error."""
    if impl != "auto" and impl not in FFN_IMPLS:
        raise ValueError(f"unknown FFN impl {impl!r}; choose one of {available_ffn_impls()}")
    if act not in IMPL_ACTS.get(impl, (act,)):
        raise ValueError(f"FFN impl {impl!r} takes act in {list(IMPL_ACTS[impl])}, got {act!r}; use 'dense' or 'auto'")
    return impl


def resolve_ffn_impl(impl: str, device: torch.device, k: int, d_ff: int, act: str = "relu") -> str:
    """The implementation that runs: ``impl`` itself, or for ``"auto"`` the device's pick
    (``AUTO_IMPL``) where it takes ``act``, and ``dense`` when k == d_ff (nothing to skip)."""
    if check_ffn_impl(impl, act) != "auto":
        return impl
    if k >= d_ff:
        return "dense"
    pick = AUTO_IMPL.get(torch.device(device).type, "dense")
    return pick if act in IMPL_ACTS.get(pick, (act,)) else "dense"


def topk_code(a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of a (..., d_ff) along the last dim: (vals, idx), each (..., k),
    in no particular order (neither form needs one, and skipping the sort of the k winners
    saves a fifth of topk's time on CPU)."""
    return torch.topk(a, k, dim=-1, sorted=False)


def naive_topk_ffn(c: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, k: int, act: str = "relu") -> torch.Tensor:
    """The reference: y = W2 mask_k(act(W1 c)), the zeros multiplied densely. Any dtype."""
    a = _activation(act)(F.linear(c, w_up))  # (..., d_ff)
    if k < a.shape[-1]:
        vals, idx = torch.topk(a, k, dim=-1)  # (..., k)
        a = torch.zeros_like(a).scatter(-1, idx, vals)
    return F.linear(a, w_down)  # (..., d_out)


def topk_ffn(
    c: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, k: int, act: str = "relu", impl: str = "auto"
) -> torch.Tensor:
    """y = W2 topk_k(act(W1 c)): c (..., d_in) -> y (..., d_out).

    ``impl``: "dense", "gather", "mask" or "auto" (see the module docstring). Gradients reach c,
    W1 and W2 through the k kept units only, identically in every form.
    """
    for name, t in (("c", c), ("w_up", w_up), ("w_down", w_down)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            what = f"dtype {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"topk_ffn: {name} must be a floating-point tensor, got {what}")
    if w_up.dim() != 2 or w_down.dim() != 2 or c.dim() < 1 or w_up.shape[1] != c.shape[-1] \
            or w_down.shape[1] != w_up.shape[0]:
        raise ValueError(f"topk_ffn: want c (..., d_in), w_up (d_ff, d_in) and w_down (d_out, d_ff); got "
                         f"{tuple(c.shape)}, {tuple(w_up.shape)} and {tuple(w_down.shape)}")
    d_ff = w_up.shape[0]
    _check_k(k, d_ff, "d_ff=")
    _activation(act)  # a named error for an unknown activation, before any work
    name = resolve_ffn_impl(impl, c.device, k, d_ff, act)
    z = F.linear(c, w_up)  # (..., d_ff), before the activation, which each form applies
    if k == d_ff and name == "dense":
        return F.linear(_activation(act)(z), w_down)
    return FFN_IMPLS[name](z, act, k, w_down)  # (..., d_out)
