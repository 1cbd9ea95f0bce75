"""v23d: HBM bytes and L2 hit rate of the EMA forward's plans, under Nsight Compute, H100.

One variant a process (argv[1]), the forward launched twice; profile the second launch, e.g.
  git apply results/bench/kernel_experiments/scripts/v23_segment_plans_and_l2_keep.patch
  for v in b16 default n4e05 n4e05keep; do
    ncu --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct,gpu__time_duration.sum \\
        -k regex:_ema_fwd_kernel --launch-skip 1 --launch-count 1 --csv \\
        env PYTHONPATH=src python <this file> $v
  done
Nsight Compute flushes the caches before the profiled launch (its default cache control), so the
launch starts from a cold L2.
"""

import sys
from dataclasses import replace

import torch

import emaprobe.ops.triton_scan as ts

A = (0.5, 0.1, 0.02)
variant = sys.argv[1]
B, T = (16, 2048) if variant == "b16" else (4, 8192)
x = torch.randn(B, T, 768, device="cuda", dtype=torch.bfloat16)
cfg = None
if variant.startswith("n4e05"):
    cfg = replace(ts._choose(None, ts.EMA_FWD, B, 768, x.device), split=True, warmup=True, min_programs=4 * 48)
    ts.WARM_FIRST_EXTRA, ts.WARM_SEG_RATIO = 0.5, 1
if variant == "n4e05keep":
    ts.WARM_L2_KEEP, ts.WARM_L2_HINTS = True, ("", "", "evict_first")
for _ in range(2):
    ts.ema_traces_fwd(x, A, cfg=cfg)
torch.cuda.synchronize()
print(variant, B, T, "plan", ts._ema_plan(cfg or ts._choose(None, ts.EMA_FWD, B, 768, x.device), B * 768 // 64, T, A,
                                          x.device, ts.WARM_FIRST_EXTRA)[:3])
