# session 9, exp 17: what a fused "traces + predictor input" kernel could save in a SPEN block.
# The block builds M's input with torch.cat([e, H]) (B, T, (S+1)D); the alternative computes
# M [e; H] as e W_e^T + H W_H^T (two GEMMs, the second accumulating into the first: no cat).
import json, os, sys, time
import torch, triton, triton.testing
import torch.nn.functional as F
sys.path.insert(0, "src")  # run from the repository root
from emaprobe.models.spen import SPENConfig, SPENBlock
from emaprobe.ops import ema_traces
from emaprobe.experiments.bench_scan_cuda import copy_bandwidth
torch.manual_seed(0)
bw = copy_bandwidth()
dev = "cuda"
res = {"card": torch.cuda.get_device_name(), "copy_Bps": bw, "rows": []}


def mix_cat(block, e, H):
    return block.mix(torch.cat([e.to(H.dtype), H.flatten(2)], dim=-1))


def mix_split(block, e, H):
    D = e.shape[-1]
    W = block.mix.weight
    c = F.linear(e.to(H.dtype), W[:, :D])
    Hf = H.flatten(2)
    return torch.addmm(c.flatten(0, 1), Hf.flatten(0, 1), W[:, D:].t()).view(*e.shape[:2], -1)


def block_fwd(block, x, mix):
    u = block.norm(x)
    H, _ = block.mixer(u, None)
    x_hat, _ = block.predictor(H, None, None)
    e = u - x_hat
    c = mix(block, e, H)
    return x + block.ffn(c)


for (B, T) in [(16, 2048), (64, 512)]:
    cfg = SPENConfig()
    block = SPENBlock(cfg).to(dev, torch.bfloat16)
    x = torch.randn(B, T, cfg.d_model, device=dev, dtype=torch.bfloat16, requires_grad=True)
    with torch.no_grad():
        ref = block(x)[0]
        for name, mix in (("cat", mix_cat), ("split", mix_split)):
            y = block_fwd(block, x, mix)
            print(B, T, name, "max |y - block(x)|", float((y - ref).abs().max()), flush=True)
    g = torch.randn_like(ref)
    H = torch.randn(B, T, 3, cfg.d_model, device=dev, dtype=torch.bfloat16)
    e = torch.randn(B, T, cfg.d_model, device=dev, dtype=torch.bfloat16)
    r = {"B": B, "T": T, "D": cfg.d_model, "S": 3, "d_b": cfg.d_bottleneck}
    r["cat_only_ms"] = triton.testing.do_bench(lambda: torch.cat([e, H.flatten(2)], dim=-1), rep=200)
    r["cat_bytes"] = B * T * cfg.d_model * 4 * 2 * 2
    r["cat_floor_ms"] = r["cat_bytes"] / bw * 1e3
    r["ema_fwd_ms"] = triton.testing.do_bench(lambda: ema_traces(e, cfg.alphas), rep=200)
    for name, mix in (("cat", mix_cat), ("split", mix_split)):
        with torch.no_grad():
            r[f"mix_fwd_{name}_ms"] = triton.testing.do_bench(lambda: mix(block, e, H), rep=200)
            r[f"block_fwd_{name}_ms"] = triton.testing.do_bench(lambda: block_fwd(block, x, mix), rep=200)

        def fb():
            x.grad = None
            for p in block.parameters():
                p.grad = None
            block_fwd(block, x, mix).backward(g)
        r[f"block_fwd_bwd_{name}_ms"] = triton.testing.do_bench(fb, rep=200)
    print(r, flush=True)
    res["rows"].append(r)
json.dump(res, open(os.environ["OUT"] + "/exp17.json", "w"), indent=1)
