# session 8, exp 9 (v10): the EMA forward with timescales spread over programs (TileConfig.group), against v8 (HEAD)
import importlib.util, json, os, sys, time
import torch, triton, triton.testing
sys.path.insert(0, "src")
from emaprobe.ops import triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import copy_bandwidth
spec = importlib.util.spec_from_file_location("ts_v8", ".carry/ts_v8.py")
old = importlib.util.module_from_spec(spec); sys.modules["ts_v8"] = old; spec.loader.exec_module(old)
bench = lambda fn: float(triton.testing.do_bench_cudagraph(fn, rep=100))
al = torch.tensor((0.5, 0.1, 0.02), dtype=torch.float64, device="cuda")
bw = copy_bandwidth()
print("copy TB/s", bw / 1e12, flush=True)
CFGS = [(16, 64, 1, 2, 6), (16, 64, 1, 2, 4), (16, 64, 1, 2, 3), (16, 128, 1, 4, 4), (16, 128, 1, 4, 6), (16, 128, 1, 4, 3),
        (16, 128, 2, 2, 6), (16, 128, 2, 2, 4), (32, 128, 1, 4, 3), (8, 128, 1, 4, 8), (8, 128, 1, 4, 6)]
res = {"card": torch.cuda.get_device_name(), "copy_Bps": bw, "rows": []}
t0 = time.time()
for (B, T, D) in [(16, 2048, 768), (64, 512, 768), (4, 8192, 768), (1, 65536, 768)]:
    floor = B * T * D * 8 / bw * 1e3
    x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
    h0 = torch.randn(B, 3, D, device="cuda")
    ref, refT = old.ema_traces_fwd(x, al, h0)
    r = {"B": B, "T": T, "kernel": "v8", "floor_ms": floor, "ema_fwd": bench(lambda: old.ema_traces_fwd(x, al))}
    r["x_floor"] = r["ema_fwd"] / floor
    print(r, flush=True); res["rows"].append(r)
    for group in (1, 4):
        for ct, bd, w, v, st in CFGS:
            for split in ((None, True, False) if B == 4 and group == 1 else (None,)):
                cfg = ts.TileConfig(ct=ct, block=bd, num_warps=w, vec=v, stages=st, group=group, split=split)
                r = {"B": B, "T": T, "kernel": "v10", "ct": ct, "block": bd, "num_warps": w, "vec": v, "stages": st,
                     "group": group, "split": split, "floor_ms": floor}
                try:
                    o, oT = ts.ema_traces_fwd(x, al, h0, cfg=cfg)
                    r["max_abs_diff"] = max(float((o.float() - ref.float()).abs().max()), float((oT - refT).abs().max()))
                    r["ema_fwd"] = bench(lambda: ts.ema_traces_fwd(x, al, cfg=cfg))
                    r["x_floor"] = r["ema_fwd"] / floor
                except Exception as e:
                    r["error"] = f"{type(e).__name__}: {e}"[:300]
                print(r, f"{time.time()-t0:.0f}s", flush=True); res["rows"].append(r)
    json.dump(res, open(os.environ["OUT"] + "/exp9.json", "w"), indent=1)
