"""v26b: EMA forward programs of 2 or 4 warps (64 channels a warp), depths swept, H100.

v26 found 128-channel programs of two warps faster than the default's one-warp 64-channel
programs at B4 T8192, B1 T65536 and B16 T2048. Here: 128 channels x 2 warps and 256 x 4, tile loop
3-5 deep, warm-up loops 4-8 deep, segment counts as the default's (same warps in flight). No kernel
change. Each variant three times, interleaved, medians, checked against the exact two passes.

Run from the repository root on the GPU machine: PYTHONPATH=src python <this file> OUT_DIR
"""

import json
import statistics
import sys
from dataclasses import replace

import torch

import emaprobe.ops.triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import _bench, copy_bandwidth

A = (0.5, 0.1, 0.02)
dev = torch.device("cuda")
card = torch.cuda.get_device_name()
bw = copy_bandwidth()
print(card, f"copy {bw / 1e12:.3f} TB/s", flush=True)
res = {"card": card, "copy_Bps": bw, "alphas": A, "rows": []}
for B, T, counts in ((4, 8192, (5, 4)), (1, 65536, (22,)), (16, 2048, (1,))):
    D = 768
    x = torch.randn(B, T, D, device=dev, dtype=torch.bfloat16)
    floor = 8 * B * T * D / bw * 1e3
    default = ts._choose(None, ts.EMA_FWD, B, D, dev)
    ref = ts.ema_traces_fwd(x, A, cfg=replace(default, warmup=False))[0].float()
    fns = {"default": None}
    for n in counts:
        for block, warps in ((128, 2), (256, 4)):
            for st in (3, 4, 5):
                for ws in ((4, 6, 8) if n > 1 else (6,)):
                    fns[f"{block}x{warps}w_st{st}_ws{ws}_n{n}"] = ts.TileConfig(
                        ct=32, block=block, num_warps=warps, vec=2, stages=st, warm_stages=ws, split=n > 1,
                        warmup=n > 1 or None, min_programs=n * B * D // block if n > 1 else 0)
    runs, info = {k: [] for k in fns}, {}
    for k, cfg in fns.items():
        out = ts.ema_traces_fwd(x, A, cfg=cfg)[0].float()
        c = cfg or default
        info[k] = dict(err_vs_two_pass=((out - ref).abs().max() / ref.abs().max()).item(),
                       plan=list(ts._ema_plan(c, B * D // c.block, T, A, dev)[:2]))
    for _ in range(3):
        for k, cfg in fns.items():
            runs[k].append(_bench(lambda cfg=cfg: ts.ema_traces_fwd(x, A, cfg=cfg), k, rep=40))
    for k in fns:
        ms = statistics.median(runs[k])
        res["rows"].append(dict(B=B, T=T, D=D, variant=k, **info[k], ms=ms, x_floor=ms / floor, runs=runs[k]))
        print(B, T, k, info[k]["plan"], f"{ms:.4f} ({ms / floor:.3f}x) err {info[k]['err_vs_two_pass']:.1e}",
              flush=True)
    del x, ref
    torch.cuda.empty_cache()
slug = "-".join("".join(c if c.isalnum() else " " for c in card.lower()).split())
with open(f"{sys.argv[1]}/v26b_multi_warp_sweep_{slug}.json", "w") as f:
    json.dump(res, f, indent=1)
for B in (4, 1, 16):
    rows = sorted((r for r in res["rows"] if r["B"] == B), key=lambda r: r["ms"])
    for r in rows[:4]:
        print("BEST", B, r["variant"], r["plan"], f"{r['ms']:.4f}", f"{r['x_floor']:.3f}")
