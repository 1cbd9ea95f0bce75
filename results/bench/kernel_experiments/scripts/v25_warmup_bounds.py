"""v25: is the warm-up's cost its loads or its scans? EMA forward at long T, H100 (bounds, not kernels).

Launches the forward kernel with its default segment plan and the 832-row warm-up done three
ways (``WMODE`` of ``v25_warmup_bounds.patch``): 0 as committed; 1 its loads alone, each tile only
summed (wrong values); 2 its scans alone, on tiles made in registers (wrong values); 3 (v25c, right
values for decays in (0, 1)) each tile's end state as weighted sums, sum_r alpha dec^(CT-1-r) x_r,
over tiles loaded 16 bytes a thread; 4 (v25d) tiles of 64 rows instead of 32, as deep; 5 the same,
half as deep (the same bytes in flight). Beside them, no warm-up at all (0 rows). Each three times,
interleaved, medians.

Run from the repository root on the GPU machine, the patch applied:
  PYTHONPATH=src python <this file> OUT_DIR
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


def forward(x, cfg, nseg, seglen, warmlen, mode):
    """ema_traces_fwd's one-pass warm-up launch (S = 3, no h0), ``warmlen`` warm-up rows done as ``mode``."""
    B, T, D = x.shape
    dec64, dec, alp = ts._coefs(A, x.device)
    out = torch.empty(B, T, 3, D, dtype=x.dtype, device=x.device)
    hend = torch.empty(B, nseg, 3, D, dtype=torch.float32, device=x.device)
    ts._ema_fwd_kernel[(D // cfg.block, nseg, B)](
        x, out, x, hend, hend, dec, dec64, alp, T, D, 3 * D, seglen, nseg, warmlen,
        NS=3, CT=cfg.ct, BD=cfg.block, VEC=cfg.vec, STAGES=cfg.stages, num_warps=cfg.num_warps,
        HAS_HIN=False, STORE_OUT=True, COMBINE=False, WARM=True, EVEN_D=True, WSTAGES=cfg.warm_stages,
        WMODE=mode)
    return out


for B, T, counts in ((4, 8192, (4, 5)), (1, 65536, (22,))):
    D = 768
    x = torch.randn(B, T, D, device=dev, dtype=torch.bfloat16)
    floor = 8 * B * T * D / bw * 1e3
    default = ts._choose(None, ts.EMA_FWD, B, D, dev)
    programs = B * D // default.block
    ref = ts.ema_traces_fwd(x, A, cfg=replace(default, warmup=False))[0].float()
    fns, runs, info = {}, {}, {}
    for n in counts:
        cfg = replace(default, min_programs=n * programs, split=True, warmup=True)
        nseg, seglen, warm = ts._ema_plan(cfg, programs, T, A, dev)
        assert warm is not None and nseg == n, (nseg, seglen)
        for wl, mode in ((0, 0), (max(warm), 0), (max(warm), 1), (max(warm), 2), (max(warm), 3), (max(warm), 4),
                         (max(warm), 5)):
            key = f"n{nseg}_warm{wl}_" + ("as committed", "loads alone", "scans alone", "weighted sums, 16-byte",
                                          "64-row tiles", "64-row tiles, half as deep")[mode]
            fns[key] = lambda cfg=cfg, nseg=nseg, seglen=seglen, wl=wl, mode=mode: forward(x, cfg, nseg, seglen, wl,
                                                                                             mode)
            err = ((fns[key]().float() - ref).abs().max() / ref.abs().max()).item()
            info[key], runs[key] = dict(nseg=nseg, seglen=seglen, warmlen=wl, mode=mode, err_vs_two_pass=err), []
    for _ in range(3):
        for key, fn in fns.items():
            runs[key].append(_bench(fn, key, rep=40))
    for key in fns:
        ms = statistics.median(runs[key])
        row = dict(B=B, T=T, D=D, variant=key, **info[key], ms=ms, x_floor=ms / floor, runs=runs[key])
        print(B, T, key, f"{ms:.4f} ({ms / floor:.3f}x) err {info[key]['err_vs_two_pass']:.1e}", flush=True)
        res["rows"].append(row)
    del x, ref
    torch.cuda.empty_cache()

slug = "-".join("".join(c if c.isalnum() else " " for c in card.lower()).split())
with open(f"{sys.argv[1]}/v25_warmup_bounds_{slug}.json", "w") as f:
    json.dump(res, f, indent=1)
