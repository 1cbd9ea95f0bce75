"""Eager timing of the public ema_traces against ema_traces_fwd (H100), to recheck the bench JSON's B16
public_ema_traces_fwd_eager_ms of 0.129 ms. Output: ../public_eager_recheck_nvidia-h100-80gb-hbm3.log.
Run: PYTHONPATH=src python <this file>"""

import time

import torch

import emaprobe.ops.triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import _bench_eager
from emaprobe.ops import ema_traces

A = (0.5, 0.1, 0.02)
for B, T in [(64, 512), (16, 2048), (4, 8192)]:
    x = torch.randn(B, T, 768, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        for _ in range(3):
            d = _bench_eager(lambda: ts.ema_traces_fwd(x, A))
            p = _bench_eager(lambda: ema_traces(x, A, backend="triton"))
            print(B, T, f"direct {d:.4f} public {p:.4f}", flush=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        ema_traces(x, A, backend="triton")
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    print("host us per public call", (t1 - t0) / 200 * 1e6)
