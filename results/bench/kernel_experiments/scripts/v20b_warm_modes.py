"""v20b: the warm-up loops of v20, two ways for the forward and three pipeline depths, H100.

Forward: one warm-up for every timescale over the slowest one's 832 steps (mode 1), or each timescale
over its own 32 / 160 / 832 steps (mode 2, re-reading x from cache for the short ones). Both
directions: the warm-up loops pipelined as deep as the main loop (4) or deeper (6, 8: they hold no
outputs). Default plans (64-channel tiles, 2 programs per SM, segments twice the warm-up); v10's
two passes timed in the same run. Outputs checked against the two-pass ones.

Run from the repository root on the GPU machine, after applying ``v20b_warm_modes.patch`` to
``src/emaprobe/ops/triton_scan.py`` (it restores the two switches the run used, ``WARM_MODE`` and
``WARM_STAGES``, which were removed once mode 1 and a depth of 6 were kept):
PYTHONPATH=src python <this file> OUT_DIR. The three tiny kernels that v21 removed were still in
every call when it ran.
"""

import json
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


def maxdiff(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


for B, T, D in [(1, 65536, 768), (4, 8192, 768)]:
    x = torch.randn(B, T, D, device=dev, dtype=torch.bfloat16)
    gh = torch.randn(B, T, 3, D, device=dev, dtype=torch.bfloat16)
    floor = 8 * B * T * D / bw * 1e3
    for kind, defaults, fn in (("fwd", ts.EMA_FWD, lambda c: ts.ema_traces_fwd(x, A, cfg=c)),
                               ("bwd", ts.EMA_BWD, lambda c: ts.ema_traces_bwd(gh, A, None, torch.bfloat16, cfg=c))):
        c10 = replace(defaults[0], warmup=False)  # v10: the widest tiles, two passes
        ref = fn(c10)
        base = _bench(lambda: fn(c10), kind, rep=60)
        res["rows"].append(dict(B=B, T=T, kind=kind, variant="v10", ms=base, x_floor=base / floor))
        print(B, T, kind, "v10", f"{base:.4f}", f"{base / floor:.3f}", flush=True)
        cfg = ts._choose(None, defaults, B, D, dev)
        for mode in ((1, 2) if kind == "fwd" else (1,)):
            for wst in (0, 6, 8):
                ts.WARM_MODE, ts.WARM_STAGES = mode, wst
                err = max(maxdiff(o, r) for o, r in zip(fn(cfg), ref))
                ms = _bench(lambda: fn(cfg), kind, rep=60)
                row = dict(B=B, T=T, kind=kind, variant="warm", mode=mode, warm_stages=wst or cfg.stages,
                           cfg=cfg.__dict__, plan=list(ts._ema_plan(cfg, B * D // cfg.block, T, A, dev)[:2]),
                           ms=ms, x_floor=ms / floor, vs_v10=ms / base, maxdiff_vs_two_pass=err)
                res["rows"].append(row)
                print(B, T, kind, "mode", mode, "wstages", wst or cfg.stages, row["plan"], f"{ms:.4f}",
                      f"{ms / floor:.3f}", f"{ms / base:.3f}", f"{err:.1e}", flush=True)
        ts.WARM_MODE, ts.WARM_STAGES = 1, 0
    del x, gh
    torch.cuda.empty_cache()

slug = "-".join("".join(c if c.isalnum() else " " for c in card.lower()).split())
with open(f"{sys.argv[1]}/v20b_warm_modes_{slug}.json", "w") as f:
    json.dump(res, f, indent=1)
