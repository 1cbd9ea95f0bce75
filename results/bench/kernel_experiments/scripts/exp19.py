# session 9, exp 19: the public ema_traces, eager, at B16 and B64 (exp17 saw 0.195 ms at B16)
import json, os, sys
import torch, triton, triton.testing
sys.path.insert(0, "src")
from emaprobe.ops import ema_traces
from emaprobe.ops import triton_scan as ts
res = {"card": torch.cuda.get_device_name(), "rows": []}
al = (0.5, 0.1, 0.02)
alt = torch.tensor(al, dtype=torch.float64, device="cuda")
for rnd in range(2):
    for (B, T) in [(16, 2048), (64, 512)]:
        e = torch.randn(B, T, 768, device="cuda", dtype=torch.bfloat16)
        r = {"round": rnd, "B": B, "T": T}
        for mode in ("mean", "median"):
            r[f"public_tuple_{mode}"] = triton.testing.do_bench(lambda: ema_traces(e, al), rep=200, return_mode=mode)
            r[f"kernel_{mode}"] = triton.testing.do_bench(lambda: ts.ema_traces_fwd(e, alt), rep=200, return_mode=mode)
        r["public_graph"] = triton.testing.do_bench_cudagraph(lambda: ema_traces(e, al), rep=100)
        print(r, flush=True)
        res["rows"].append(r)
json.dump(res, open(os.environ["OUT"] + "/exp19.json", "w"), indent=1)
