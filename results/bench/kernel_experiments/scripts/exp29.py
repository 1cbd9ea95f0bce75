# session 10, exp 29: segmented EMA forward (v10) with L2 eviction hints, so that pass 2's re-read of x may hit L2
import json, os, sys, time
import torch, triton, triton.testing
sys.path.insert(0, "src"); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emaprobe.ops import triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import copy_bandwidth
import ts_evict
bench = lambda f: float(triton.testing.do_bench_cudagraph(f, rep=100))
al = torch.tensor((0.5, 0.1, 0.02), dtype=torch.float64, device="cuda")
bw = copy_bandwidth()
print("card", torch.cuda.get_device_name(), "copy TB/s", bw / 1e12, flush=True)
V = {"none": {}, "p1 load evict_last": {"p1_load": "evict_last"},
     "p1 load evict_last, p2 store evict_first": {"p1_load": "evict_last", "p2_store": "evict_first"},
     "p1 load evict_last, p2 load+store evict_first": {"p1_load": "evict_last", "p2_load": "evict_first", "p2_store": "evict_first"},
     "p2 store evict_first": {"p2_store": "evict_first"}}
res = {"card": torch.cuda.get_device_name(), "copy_Bps": bw, "rows": []}
for (B, T, D) in [(1, 65536, 768), (4, 8192, 768), (8, 4096, 768), (2, 32768, 768)]:
    floor = B * T * D * 8 / bw * 1e3
    x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
    ref, refT = ts.ema_traces_fwd(x, al)
    for rep in range(2):
        r = {"B": B, "T": T, "cfg": "v10 (emaprobe)", "round": rep, "floor_ms": floor, "ema_fwd": bench(lambda: ts.ema_traces_fwd(x, al))}
        r["x_floor"] = r["ema_fwd"] / floor
        print(B, T, r["cfg"], round(r["ema_fwd"], 4), round(r["x_floor"], 3), flush=True)
        res["rows"].append(r)
        for name, ev in V.items():
            ts_evict.EVICT.clear(); ts_evict.EVICT.update(ev)
            o, oT = ts_evict.ema_traces_fwd(x, al)
            same = bool(torch.equal(o, ref) and torch.equal(oT, refT))
            r = {"B": B, "T": T, "cfg": name, "round": rep, "floor_ms": floor, "bitwise_equal": same,
                 "ema_fwd": bench(lambda: ts_evict.ema_traces_fwd(x, al))}
            r["x_floor"] = r["ema_fwd"] / floor
            print(B, T, name, round(r["ema_fwd"], 4), round(r["x_floor"], 3), "equal" if same else "DIFFERENT", flush=True)
            res["rows"].append(r)
    json.dump(res, open(os.environ["OUT"] + "/exp29.json", "w"), indent=1)
