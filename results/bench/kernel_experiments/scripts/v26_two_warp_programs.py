"""v26: 128-channel programs of two warps (64 channels a warp) for the EMA forward, H100.

Each warp keeps today's 64-channel, 2-channels-a-lane layout, but a program's two warps read and
write adjacent 128-byte halves of one 256-byte row, as the 128-channel one-warp tiles that HBM
prefers (v10) do. Same warps in flight as the default at every shape; segment counts as the
default's. No kernel change: ``TileConfig(block=128, num_warps=2, vec=2)``. Each variant three
times, interleaved, medians, checked against the exact two passes.

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
for B, T, counts in ((4, 8192, (4, 5)), (1, 65536, (22,)), (16, 2048, (1,)), (64, 512, (1,))):
    D = 768
    x = torch.randn(B, T, D, device=dev, dtype=torch.bfloat16)
    floor = 8 * B * T * D / bw * 1e3
    default = ts._choose(None, ts.EMA_FWD, B, D, dev)
    ref = ts.ema_traces_fwd(x, A, cfg=replace(default, warmup=False))[0].float()
    fns = {"default": None}
    for n in counts:
        for ct, st in ((32, 4), (16, 4)):
            cfg = ts.TileConfig(ct=ct, block=128, num_warps=2, vec=2, stages=st, split=n > 1, warmup=n > 1 or None,
                                min_programs=n * B * D // 128 if n > 1 else 0)
            fns[f"2warps_ct{ct}_n{n}"] = cfg
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
with open(f"{sys.argv[1]}/v26_two_warp_programs_{slug}.json", "w") as f:
    json.dump(res, f, indent=1)
