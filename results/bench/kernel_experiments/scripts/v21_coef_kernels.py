"""v21: what the three small coefficient kernels cost that every EMA call ran before the scan, H100.

Before v21, ``ema_traces_fwd`` computed 1 - alpha (float64) and two float32 casts on the GPU at each
call; now they are made once per (alphas, device). This times today's forward with and without those
three ops put back in front of it, alternating, in one CUDA graph each (as the benchmark times).

Run from the repository root on the GPU machine: PYTHONPATH=src python <this file> OUT_DIR
"""

import json
import statistics
import sys

import torch

import emaprobe.ops.triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import _bench, copy_bandwidth

A = (0.5, 0.1, 0.02)
a64 = torch.tensor(A, dtype=torch.float64, device="cuda")
card = torch.cuda.get_device_name()
bw = copy_bandwidth()
res = {"card": card, "copy_Bps": bw, "rows": []}
for B, T, D in [(64, 512, 768), (16, 2048, 768), (1, 65536, 768)]:
    x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
    floor = 8 * B * T * D / bw * 1e3

    def with_coef_kernels():
        dec64 = 1.0 - a64  # what each call computed before v21
        dec64.float(), a64.float()
        return ts.ema_traces_fwd(x, A)

    now = {"v21": [], "v20_coef_kernels": []}
    for _ in range(3):
        now["v21"].append(_bench(lambda: ts.ema_traces_fwd(x, A), "v21", rep=60))
        now["v20_coef_kernels"].append(_bench(with_coef_kernels, "v20", rep=60))
    row = dict(B=B, T=T, D=D, floor_ms=floor, **{k + "_ms": statistics.median(v) for k, v in now.items()},
               runs=now)
    print(B, T, D, f"floor {floor:.4f}", {k: f"{statistics.median(v):.4f} ({statistics.median(v) / floor:.3f}x)"
                                            for k, v in now.items()}, flush=True)
    res["rows"].append(row)
slug = "-".join("".join(c if c.isalnum() else " " for c in card.lower()).split())
with open(f"{sys.argv[1]}/v21_coef_kernels_{slug}.json", "w") as f:
    json.dump(res, f, indent=1)
