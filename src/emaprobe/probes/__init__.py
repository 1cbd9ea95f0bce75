"""Information-dilution probes: how much of a token's identity a context state still holds.

| module      | what it measures                                                        |
|-------------|-------------------------------------------------------------------------|
| `linear`    | the frozen-feature linear softmax probe; bits = H(x) - CE, seed CIs      |
| `analytic`  | the analytic lag-k curve of fixed EMA over random embeddings            |
| `states`    | states to probe: mixers over random embeddings, trained LM blocks       |
| `recall`    | MQAR: a 2-layer residual model per mixer, trained and scored            |
| `depth`     | dilution over depth: fixed residual accumulation against learned gates  |

The experiments that run them are ``experiments/probe_lag.py``, ``probe_mqar.py``,
``probe_depth.py`` and ``probe_map.py`` (``emaprobe run probe_lag --smoke``).
"""

from emaprobe.probes.analytic import analytic_bits, bayes_bits_mc, channel_bits, lag_snr, lag_weights
from emaprobe.probes.linear import ProbeFit, fit_probe, mean_ci

__all__ = [
    "ProbeFit",
    "analytic_bits",
    "bayes_bits_mc",
    "channel_bits",
    "fit_probe",
    "lag_snr",
    "lag_weights",
    "mean_ci",
]
