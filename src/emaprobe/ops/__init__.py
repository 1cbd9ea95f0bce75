"""Scan ops: the one recurrence every context mechanism in emaprobe runs.

``linear_scan(a, b)`` computes ``h_t = a_t * h_{t-1} + b_t`` along dim 1 for fixed,
learned or input-dependent decays; ``ema_traces(x, alphas)`` is its fixed-decay
multi-timescale special case, ``h_t^(s) = (1 - alpha_s) h_{t-1}^(s) + alpha_s x_t``;
``gated_scan(logits, x, ...)`` the selective mixer's case, its sigmoid gates included.
``naive_*`` are the sequential references; ``*_step`` the one-token forms.

``gated_linear_attention(q, k, v, log_decay)`` is the matrix-state recurrence
``S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t`` (GLA), with its
reference ``naive_gla``, chunked form ``chunk_gla`` and step form ``gla_step``.

``cross_entropy(logits, target)`` is the language models' loss, on CUDA two Triton passes over the
logits in their own dtype (``losses.py``), with its float64 reference ``naive_cross_entropy``;
``linear_cross_entropy(h, weight, target)`` is the tied head and that loss in one op, as training calls it.

``topk_ffn(c, w_up, w_down, k)`` is the top-k FFN ``y = W2 topk(act(W1 c))``, its down
projection either dense (``naive_topk_ffn``'s form) or a gather of the k kept columns.
"""

from emaprobe.ops.gla import (
    GLA_BACKENDS,
    GLABackend,
    available_gla_backends,
    chunk_gla,
    gated_linear_attention,
    gla_step,
    naive_gla,
    register_gla_backend,
    resolve_gla_backend,
)
from emaprobe.ops.losses import (CE_IMPLS, HEAD_ROWS, LINEAR_CE_IMPLS, available_ce_impls, cross_entropy,
                                linear_cross_entropy, naive_cross_entropy, resolve_ce_impl)
from emaprobe.ops.naive import accum_dtype, gate_inputs, naive_ema_traces, naive_gated_scan, naive_linear_scan
from emaprobe.ops.scan import (
    BACKENDS,
    DEFAULT_ALPHAS,
    ScanBackend,
    available_backends,
    ema_traces,
    gated_scan,
    linear_scan,
    register_backend,
    resolve_backend,
)
from emaprobe.ops.sparse_ffn import (
    ACTIVATIONS,
    FFN_IMPLS,
    available_ffn_impls,
    check_ffn_impl,
    naive_topk_ffn,
    resolve_ffn_impl,
    topk_ffn,
)
from emaprobe.ops.step import ema_step, linear_scan_step

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "CE_IMPLS",
    "DEFAULT_ALPHAS",
    "FFN_IMPLS",
    "GLABackend",
    "GLA_BACKENDS",
    "HEAD_ROWS",
    "LINEAR_CE_IMPLS",
    "ScanBackend",
    "accum_dtype",
    "available_backends",
    "available_ce_impls",
    "available_ffn_impls",
    "available_gla_backends",
    "check_ffn_impl",
    "chunk_gla",
    "cross_entropy",
    "ema_step",
    "ema_traces",
    "gate_inputs",
    "gated_linear_attention",
    "gated_scan",
    "gla_step",
    "linear_cross_entropy",
    "linear_scan",
    "linear_scan_step",
    "naive_cross_entropy",
    "naive_ema_traces",
    "naive_gated_scan",
    "naive_gla",
    "naive_linear_scan",
    "naive_topk_ffn",
    "register_backend",
    "register_gla_backend",
    "resolve_backend",
    "resolve_ce_impl",
    "resolve_ffn_impl",
    "resolve_gla_backend",
    "topk_ffn",
]
