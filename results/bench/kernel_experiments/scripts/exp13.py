# session 8, exp 13: which launches get the broadcast-decay selective backward wrong on the GPU
import torch, sys, json, os
sys.path.insert(0, "src")
from emaprobe.ops import triton_scan as ts
from emaprobe.ops import naive_linear_scan
torch.manual_seed(0)
def rel(a, b): return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
rows = []
C = ts.TileConfig
for F, bcast, T, dt in [(40, True, 4097, torch.float32), (40, True, 300, torch.float32), (48, True, 300, torch.float32),
                        (40, False, 300, torch.float32), (128, True, 300, torch.float32), (40, True, 300, torch.bfloat16)]:
    B = 2
    full = (B, T, F); ash = (1, 1, F) if bcast else full
    a = (torch.rand(ash, dtype=torch.float64, device="cuda") * 0.5 + 0.5); b = torch.randn(full, dtype=torch.float64, device="cuda")
    h0 = torch.randn(B, F, dtype=torch.float64, device="cuda")
    ar, br, hr = a.clone().requires_grad_(), b.clone().requires_grad_(), h0.clone().requires_grad_()
    y, yT = naive_linear_scan(ar, br, hr, return_state=True)
    gy, gT = torch.randn_like(y), torch.randn_like(yT)
    ((y * gy).sum() + (yT * gT).sum()).backward()
    for name, cfg in [("wide-split", C(ct=16, block=128, vec=4, stages=3, split=True)), ("wide-1pass", C(ct=16, block=128, vec=4, stages=3, split=False)),
                      ("wide-unpiped", C(ct=16, block=128, vec=4, stages=1, split=True)), ("narrow-split", C(ct=16, block=64, vec=2, stages=3, split=True)),
                      ("narrow-1pass", C(ct=16, block=64, vec=2, stages=3, split=False)), ("w2x64", C(ct=16, block=128, vec=2, num_warps=2, stages=3, split=True))]:
        o, oT = ts.linear_scan_fwd(a.to(dt), b.to(dt), h0.float(), cfg=cfg)
        ga, gb, g0 = ts.linear_scan_bwd(a.to(dt), gy.to(dt), o, h0.float(), gT.float(), cfg=cfg)
        e = (ga.float().sum_to_size(a.shape) - ar.grad).abs().flatten()
        r = dict(F=F, bcast=bcast, T=T, dtype=str(dt), cfg=name, fwd=rel(o, y.detach()), ga=rel(ga.float().sum_to_size(a.shape), ar.grad), gb=rel(gb, br.grad),
                 worst=[int(i) for i in e.topk(4).indices.tolist()])
        print(r, flush=True); rows.append(r)
json.dump({"card": torch.cuda.get_device_name(), "rows": rows}, open(os.environ["OUT"] + "/exp13.json", "w"), indent=1)
