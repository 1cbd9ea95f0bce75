"""The CUDA scan benchmark's host-overhead helpers, on CPU: the module imports without CUDA or
Triton, and ``host_us`` times the calls it is given (no timing is asserted)."""

from __future__ import annotations

from emaprobe.experiments import bench_scan_cuda as bench


def test_host_us_calls_fn_each_round_and_syncs_around_rounds():
    calls, syncs = [], []
    us = bench.host_us(lambda: calls.append(1), calls=10, rounds=3, sync=lambda: syncs.append(1))
    assert len(calls) == 10 * (3 + 1)  # one warm-up round, then three timed
    assert len(syncs) == 2 * (3 + 1)
    assert us >= 0.0


def test_host_overhead_verdict_against_the_targets():
    row = dict(B=16, T=2048, D=768, host_us_public_ema_fwd=20.0, public_ema_fwd_eager_b2b_ms=0.070,
               public_ema_fwd_graph_ms=0.061, x_public_ema_fwd_eager_vs_graph=0.070 / 0.061,
               host_us_public_ema_fwdbwd=50.0, x_public_ema_fwdbwd_eager_vs_graph=1.1)
    assert bench.host_overhead_verdict(row).endswith("1.10x") and ": met;" in bench.host_overhead_verdict(row)
    slow = dict(row, host_us_public_ema_fwd=bench.HOST_US_TARGET + 1)
    assert "NOT met" in bench.host_overhead_verdict(slow)
    assert "host us" in bench.format_table([dict(row, ours_ema_fwd_ms=0.06, floor_fwd_ms=0.05, x_ema_fwd_vs_floor=1.2,
                                                 x_ema_fwdbwd_vs_floor=1.3, x_sel_fwd_vs_floor=1.2)], "card")
