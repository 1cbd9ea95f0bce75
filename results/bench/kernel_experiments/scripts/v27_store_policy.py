"""v27: the EMA forward's trace stores marked evict_first, against v26 (the same kernels without), H100.

The traces are 3/4 of the forward's bytes and the kernel never reads them back; ``EMA_OUT_POLICY``
marks their stores ``L2::evict_first``. This times today's forward (``triton_scan.py``) against
v26's (``ts_old.py``, a copy of it made by the command below) alternating, three rounds, and
checks that both give the same values, bitwise.

Run from the repository root on the GPU machine:
  git show 505a2e5:src/emaprobe/ops/triton_scan.py > ts_old.py
  PYTHONPATH=src:. python <this file> OUT_DIR
"""

import json
import statistics
import sys
from dataclasses import replace

import torch
import ts_old

import emaprobe.ops.triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import _bench, copy_bandwidth

A = (0.5, 0.1, 0.02)
dev = torch.device("cuda")
card = torch.cuda.get_device_name()
bw = copy_bandwidth()
print(card, f"copy {bw / 1e12:.3f} TB/s", flush=True)
res = {"card": card, "copy_Bps": bw, "alphas": A, "rows": []}
for B, T in ((4, 8192), (1, 65536), (16, 2048), (64, 512)):
    D = 768
    x = torch.randn(B, T, D, device=dev, dtype=torch.bfloat16)
    floor = 8 * B * T * D / bw * 1e3
    exact = replace(ts._choose(None, ts.EMA_FWD, B, D, dev), warmup=False)
    ref = ts.ema_traces_fwd(x, A, cfg=exact)
    fns = {"v26": lambda: ts_old.ema_traces_fwd(x, A), "v27": lambda: ts.ema_traces_fwd(x, A)}
    errs = {k: max(((o.float() - r.float()).abs().max() / r.float().abs().max()).item() for o, r in zip(f(), ref))
            for k, f in fns.items()}
    same = all(torch.equal(a, b) for a, b in zip(fns["v26"](), fns["v27"]()))
    runs = {k: [] for k in fns}
    for _ in range(3):
        for k, f in fns.items():
            runs[k].append(_bench(f, k, rep=60))
    row = dict(B=B, T=T, D=D, floor_ms=floor, bitwise_equal=same, runs=runs,
               **{f"{k}_ms": statistics.median(v) for k, v in runs.items()},
               **{f"{k}_err_vs_two_pass": e for k, e in errs.items()})
    print(B, T, {k: f"{statistics.median(v):.4f} ({statistics.median(v) / floor:.3f}x)" for k, v in runs.items()},
          "errs", {k: f"{e:.1e}" for k, e in errs.items()}, "bitwise equal", same, flush=True)
    res["rows"].append(row)
    del x, ref
    torch.cuda.empty_cache()
slug = "-".join("".join(c if c.isalnum() else " " for c in card.lower()).split())
with open(f"{sys.argv[1]}/v27_store_policy_{slug}.json", "w") as f:
    json.dump(res, f, indent=1)
