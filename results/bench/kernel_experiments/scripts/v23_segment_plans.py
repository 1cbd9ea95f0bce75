"""v23: how many forward segments, and how much longer segment 0 (which has no warm-up) should be, H100.

The EMA forward's segments each warm up over the 832 steps before them (alpha = 0.02); segment 0 has
nothing before it. This times the forward at B4 T8192 and B1 T65536 for several segment counts and
for segment 0 longer by 0 to 1 warm-ups (``first_extra``), each variant three times, interleaved, and
checks each against the exact two passes. For information it also times shorter warm-ups
(``WARM_BITS`` 20 and 16: the state dropped weighs up to 2**-20 or 2**-16), which are not the default.

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


def with_consts(fn, **consts):
    """fn() with module constants of triton_scan set to ``consts`` (restored after)."""
    old = {k: getattr(ts, k) for k in consts}
    for k, v in consts.items():
        setattr(ts, k, v)
    try:
        return fn()
    finally:
        for k, v in old.items():
            setattr(ts, k, v)


def maxdiff(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


SHAPES = {
    (4, 8192): [(c, n, e, 24) for c in (32, 16) for n in ((3, 4, 5, 6) if c == 32 else (4, 5))
                for e in ((0.0, 0.25, 0.5, 0.75, 1.0) if c == 32 else (0.0, 0.5, 1.0))]
    + [(32, n, e, bits) for n in (4, 5) for e in (0.0, 0.5) for bits in (20, 16)],
    (1, 65536): [(32, n, e, 24) for n in (16, 22, 27) for e in (0.0, 0.5, 1.0)],
}
for (B, T), variants in SHAPES.items():
    D = 768
    x = torch.randn(B, T, D, device=dev, dtype=torch.bfloat16)
    floor = 8 * B * T * D / bw * 1e3
    default = ts._choose(None, ts.EMA_FWD, B, D, dev)
    ref = ts.ema_traces_fwd(x, A, cfg=replace(default, warmup=False))
    runs = {"default": []}
    plans = {"default": ts._ema_plan(default, B * D // default.block, T, A, dev, ts.WARM_FIRST_EXTRA)[:3]}
    fns = {"default": lambda: ts.ema_traces_fwd(x, A)}
    errs = {"default": max(maxdiff(o, r) for o, r in zip(ts.ema_traces_fwd(x, A), ref))}
    for ct, nseg, extra, bits in variants:
        cfg = replace(default, ct=ct, split=True, warmup=True, min_programs=nseg * B * D // default.block)
        key = f"ct{ct}_n{nseg}_e{extra}_b{bits}"

        # WARM_SEG_RATIO = 1: min_programs alone sets the segment count
        consts = dict(WARM_FIRST_EXTRA=extra, WARM_BITS=bits, WARM_SEG_RATIO=1)

        def fn(cfg=cfg, consts=consts):
            return with_consts(lambda: ts.ema_traces_fwd(x, A, cfg=cfg), **consts)

        plans[key] = with_consts(lambda: ts._ema_plan(cfg, B * D // default.block, T, A, dev, extra)[:3], **consts)
        errs[key] = max(maxdiff(o, r) for o, r in zip(fn(), ref))
        fns[key], runs[key] = fn, []
    for _ in range(3):
        for key, fn in fns.items():
            runs[key].append(_bench(fn, key, rep=40))
    for key in fns:
        ms = statistics.median(runs[key])
        row = dict(B=B, T=T, D=D, variant=key, plan_nseg_first_seglen=list(plans[key]), ms=ms,
                   x_floor=ms / floor, maxdiff_vs_two_pass=errs[key], runs=runs[key])
        print(B, T, key, plans[key], f"{ms:.4f} ({ms / floor:.3f}x) err {errs[key]:.1e}", flush=True)
        res["rows"].append(row)
    del x, ref
    torch.cuda.empty_cache()

slug = "-".join("".join(c if c.isalnum() else " " for c in card.lower()).split())
with open(f"{sys.argv[1]}/v23_segment_plans_{slug}.json", "w") as f:
    json.dump(res, f, indent=1)
for B in (4, 1):
    rows = sorted((r for r in res["rows"] if r["B"] == B), key=lambda r: r["ms"])
    for r in rows[:5]:
        print("BEST", B, r["variant"], r["plan_nseg_first_seglen"], f"{r['ms']:.4f}", f"{r['x_floor']:.3f}")
