"""v23b: the warm-up's steps kept in L2 for the segment before, EMA forward, H100.

A segment's warm-up reads the steps that the segment before it reads last, 70-80 us later; by
then they have left L2, so they come from HBM twice. Here each warm-up first asks L2 for all its
rows at once with ``prefetch.global.L2::evict_last`` (``WARM_L2_KEEP``), so that they stay while
the scan streams past, and the segment before, after reading them, returns them to normal priority
(``applypriority.global.L2::evict_normal``). Also: the scan's stores marked evict_first
(``WARM_L2_HINTS``), segment counts, and segment 0 longer by half a warm-up. Each variant three
times, interleaved, checked against the exact two passes.

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


SEGS = {(4, 8192): (4, 5, 6), (1, 65536): (16, 22, 27)}
for (B, T), counts in SEGS.items():
    D = 768
    x = torch.randn(B, T, D, device=dev, dtype=torch.bfloat16)
    floor = 8 * B * T * D / bw * 1e3
    default = ts._choose(None, ts.EMA_FWD, B, D, dev)
    programs = B * D // default.block
    ref = ts.ema_traces_fwd(x, A, cfg=replace(default, warmup=False))
    fns, runs, plans, errs = {}, {}, {}, {}
    variants = [("default", None, {})]
    for keep in (False, True):
        for store in ("", "evict_first"):
            for n in counts:
                for extra in (0.0, 0.5):
                    cfg = replace(default, split=True, warmup=True, min_programs=n * programs)
                    consts = dict(WARM_L2_KEEP=keep, WARM_L2_HINTS=("", "", store), WARM_FIRST_EXTRA=extra,
                                  WARM_SEG_RATIO=1)
                    variants.append((f"keep{int(keep)}_st{store or '-'}_n{n}_e{extra}", cfg, consts))
    for key, cfg, consts in variants:
        def fn(cfg=cfg, consts=consts):
            return with_consts(lambda: ts.ema_traces_fwd(x, A, cfg=cfg), **consts)

        c = cfg or default
        plans[key] = with_consts(lambda: ts._ema_plan(c, programs, T, A, dev, ts.WARM_FIRST_EXTRA)[:3], **consts)
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
with open(f"{sys.argv[1]}/v23b_l2_keep_{slug}.json", "w") as f:
    json.dump(res, f, indent=1)
for B in (4, 1):
    rows = sorted((r for r in res["rows"] if r["B"] == B), key=lambda r: r["ms"])
    for r in rows[:6]:
        print("BEST", B, r["variant"], r["plan_nseg_first_seglen"], f"{r['ms']:.4f}", f"{r['x_floor']:.3f}")
