"""Scan ops: the one recurrence every context mechanism in emaprobe runs.

``linear_scan(a, b)`` computes ``h_t = a_t * h_{t-1} + b_t`` along dim 1 for fixed,
learned or input-dependent decays; ``ema_traces(x, alphas)`` is its fixed-decay
multi-timescale special case, ``h_t^(s) = (1 - alpha_s) h_{t-1}^(s) + alpha_s x_t``.
``naive_*`` are the sequential references; ``*_step`` the one-token forms.
"""

from emaprobe.ops.naive import naive_ema_traces, naive_linear_scan
from emaprobe.ops.scan import (
    BACKENDS,
    DEFAULT_ALPHAS,
    ScanBackend,
    available_backends,
    ema_traces,
    linear_scan,
    register_backend,
    resolve_backend,
)
from emaprobe.ops.step import ema_step, linear_scan_step

__all__ = [
    "BACKENDS",
    "DEFAULT_ALPHAS",
    "ScanBackend",
    "available_backends",
    "ema_step",
    "ema_traces",
    "linear_scan",
    "linear_scan_step",
    "naive_ema_traces",
    "naive_linear_scan",
    "register_backend",
    "resolve_backend",
]
