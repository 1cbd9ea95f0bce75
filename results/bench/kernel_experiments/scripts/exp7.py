# session 8: channel-block / warps / depth sweep at three shapes, plus two diagnostics:
# (1) the same kernel with the in-tile scan removed (stores alp*x): the memory-pattern limit of this loop;
# (2) a loop-free kernel, one tile per program, reading x and writing S scaled copies: what HBM gives this traffic.
import importlib.util, json, os, sys, time
import torch, triton, triton.language as tl, triton.testing
sys.path.insert(0, "src")
from emaprobe.ops import triton_scan as ts
from emaprobe.experiments.bench_scan_cuda import copy_bandwidth
src = open("src/emaprobe/ops/triton_scan.py").read().replace("\nregister_backend(", "\n(")
NOSCAN = ("    _, hh = tl.associative_scan((a, u), 0, _combine)\n    if STORE_OUT:",
          "    hh = u\n    if STORE_OUT:")
assert NOSCAN[0] in src
os.makedirs("/tmp/vx", exist_ok=True)
open("/tmp/vx/ts_noscan.py", "w").write(src.replace(*NOSCAN))
spec = importlib.util.spec_from_file_location("ts_noscan", "/tmp/vx/ts_noscan.py")
nos = importlib.util.module_from_spec(spec); sys.modules["ts_noscan"] = nos; spec.loader.exec_module(nos)

@triton.jit
def write3(X, OUT, T, D, CT: tl.constexpr, BD: tl.constexpr):
    pt = tl.program_id(0); pd = tl.program_id(1)
    rows = pt * CT + tl.arange(0, CT)
    cols = pd * BD + tl.arange(0, BD)
    r64 = rows.to(tl.int64)
    x = tl.load(X + r64[:, None] * D + cols[None, :]).to(tl.float32)
    o = OUT + r64[:, None] * (3 * D) + cols[None, :]
    tl.store(o, (0.5 * x).to(tl.bfloat16))
    tl.store(o + D, (0.1 * x).to(tl.bfloat16))
    tl.store(o + 2 * D, (0.02 * x).to(tl.bfloat16))

bench = lambda fn: float(triton.testing.do_bench_cudagraph(fn, rep=100))
al = torch.tensor((0.5, 0.1, 0.02), dtype=torch.float64, device="cuda")
bw = copy_bandwidth()
print("copy TB/s", bw / 1e12, flush=True)
CFGS = [(16, 64, 1, 2, 6), (16, 64, 1, 2, 3), (16, 64, 1, 2, 4), (16, 32, 1, 1, 4), (16, 32, 1, 1, 6), (16, 32, 1, 1, 8),
        (16, 32, 1, 1, 3), (16, 64, 2, 1, 4), (16, 64, 2, 1, 6), (16, 128, 1, 4, 4), (16, 128, 1, 4, 6),
        (16, 128, 2, 2, 6), (8, 32, 1, 1, 8), (32, 32, 1, 1, 3), (32, 32, 1, 1, 4)]
res = {"card": torch.cuda.get_device_name(), "copy_Bps": bw, "rows": [], "diag": []}
t0 = time.time()
for (B, T, D) in [(16, 2048, 768), (64, 512, 768), (4, 8192, 768)]:
    floor = B * T * D * 8 / bw * 1e3
    x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
    gh = torch.randn(B, T, 3, D, device="cuda", dtype=torch.bfloat16)
    a = (torch.rand(B, T, D, device="cuda") * 0.5 + 0.5).to(torch.bfloat16)
    b = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
    h, _ = ts.linear_scan_fwd(a, b)
    out = torch.empty(B, T, 3, D, device="cuda", dtype=torch.bfloat16)
    for ct, bd in [(16, 64), (16, 128), (32, 128), (64, 64)]:
        nw = max(1, bd * ct // 1024)
        ms = bench(lambda: write3[(B * T // ct, D // bd)](x, out, T, D, CT=ct, BD=bd, num_warps=nw))
        r = {"B": B, "T": T, "what": "write3_loopfree", "ct": ct, "bd": bd, "ms": ms, "x_floor": ms / floor}
        print(r, flush=True); res["diag"].append(r)
    for cfg_t in CFGS:
        ct, bd, w, v, st = cfg_t
        cfg = ts.TileConfig(ct=ct, block=bd, num_warps=w, vec=v, stages=st)
        r = {"B": B, "T": T, "ct": ct, "block": bd, "num_warps": w, "vec": v, "stages": st, "floor_ms": floor}
        try:
            r["ema_fwd"] = bench(lambda: ts.ema_traces_fwd(x, al, cfg=cfg))
            r["ema_fwd_noscan"] = bench(lambda: nos.ema_traces_fwd(x, al, cfg=nos.TileConfig(**cfg.__dict__)))
            r["ema_bwd"] = bench(lambda: ts.ema_traces_bwd(gh, al, None, torch.bfloat16, cfg=cfg))
            r["sel_fwd"] = bench(lambda: ts.linear_scan_fwd(a, b, cfg=cfg))
            r["sel_bwd"] = bench(lambda: ts.linear_scan_bwd(a, b, h, None, None, torch.bfloat16, torch.bfloat16, cfg=cfg))
        except Exception as err:
            r["error"] = f"{type(err).__name__}: {err}"[:300]
        r["x_floor_fwd"] = r.get("ema_fwd", 0) / floor
        print(r, f"{time.time()-t0:.0f}s", flush=True); res["rows"].append(r)
    json.dump(res, open(os.environ["OUT"] + "/exp7.json", "w"), indent=1)
