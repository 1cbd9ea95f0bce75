"""Kernel v5 experiment (notes/kernels.md): variants of the single-pass look-back scan, timed on CUDA.

Not part of the package. It edits the v5 source text (the look-back poll, the publish) into
variant modules and times each against v4 in the same run. To rerun it, from the repo root:

    git show 0084654:src/emaprobe/ops/triton_scan.py > /tmp/ts_v5.py
    git show a217e0e:src/emaprobe/ops/triton_scan.py | sed 's/^register_backend($/(/' > /tmp/ts_old.py
    V5=/tmp/ts_v5.py OLD=/tmp/ts_old.py OUT=/tmp/out PYTHONPATH=src python notes/kernels_v5_variants.py

(the commits are named in notes/kernels.md). The committed v5 already polls with ld.acquire,
so its D_ldacq is the unedited v5 and A_rmw the version that polled with atomics. Output: $OUT/exp1.json.
"""
import importlib.util
import json
import os
import sys

import torch
import triton.testing

with open(os.environ["V5"]) as _f:
    src = _f.read()
src = src.replace('\nregister_backend(', '\n(')  # no re-registration
ACQ = """        fl = tl.inline_asm_elementwise("ld.global.acquire.gpu.b32 $0, [$1];", "=r,l", [FLAGS + slot],
                                       dtype=tl.int32, is_pure=False, pack=1)"""
RMW = '        fl = tl.atomic_add(FLAGS + slot, 0, mask=~done, sem="acquire", scope="gpu")'
VOL = "        fl = tl.load(FLAGS + slot, mask=~done, other=0, volatile=True)"
_NAP = ("        kk = tl.inline_asm_elementwise(\"nanosleep.u32 100; mov.b32 $0, $1;\", \"=r,r\", [kk], "
        "dtype=tl.int32, is_pure=False, pack=1)\n")
SLEEP = ("        kk = tl.where(agg, kk + step, kk)\n", "        kk = tl.where(agg, kk + step, kk)\n" + _NAP)
V = {
    "A_rmw": [(ACQ, RMW)],
    "B_nowait": [("        if seg > 0:\n            h0, h1, h2, h3 = _look_back(",
                  "        if seg < 0:\n            h0, h1, h2, h3 = _look_back("),
                 ("        if seg > 0:\n            h, _, _, _ = _look_back(",
                  "        if seg < 0:\n            h, _, _, _ = _look_back(")],
    "D_ldacq": [],
    "E_ldvol": [(ACQ, VOL)],
    "G_ldacq_sleep": [SLEEP],
}


def load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def bench(fn) -> float:
    return triton.testing.do_bench_cudagraph(fn, rep=40)


def main() -> None:
    from emaprobe.ops import naive_ema_traces

    B, T, D = 16, 2048, 768
    x = torch.randn(B, T, D, device="cuda", dtype=torch.bfloat16)
    x64 = torch.randn(64, 512, D, device="cuda", dtype=torch.bfloat16)
    a = (torch.rand(B, T, D, device="cuda") * 0.5 + 0.5).to(torch.bfloat16)
    alpha = torch.tensor((0.5, 0.1, 0.02), dtype=torch.float64, device="cuda")
    res = {}
    os.makedirs("/tmp/vx", exist_ok=True)
    for name, reps in V.items():
        s = src
        for old, new in reps:
            assert old in s, (name, old[:60])
            s = s.replace(old, new)
        path = f"/tmp/vx/ts_{name}.py"
        with open(path, "w") as f:
            f.write(s)
        m = load(f"ts_{name}", path)
        r = {}
        for seg, cfg in (("L64", m.TileConfig(ct=16, nsub=4)), ("L32", m.TileConfig(ct=16, nsub=2))):
            r[f"ema_fwd_{seg}"] = bench(lambda: m.ema_traces_fwd(x, alpha, cfg=cfg))  # noqa: B023
            r[f"sel_fwd_{seg}"] = bench(lambda: m.linear_scan_fwd(a, x, cfg=cfg))  # noqa: B023
            r[f"ema_fwd_b64_{seg}"] = bench(lambda: m.ema_traces_fwd(x64, alpha, cfg=cfg))  # noqa: B023
        out, _ = m.ema_traces_fwd(x[:2], alpha)
        ref = naive_ema_traces(x[:2].double(), (0.5, 0.1, 0.02))
        r["err"] = ((out.double() - ref).norm() / ref.norm()).item()
        print(name, {k: round(v, 4) for k, v in r.items()}, flush=True)
        res[name] = r
    res["zeros_6145"] = bench(lambda: torch.zeros(6145, dtype=torch.int32, device="cuda"))
    m = load("ts_old", os.environ["OLD"])
    res["old"] = {"ema_fwd": bench(lambda: m.ema_traces_fwd(x, alpha)),
                  "ema_fwd_b64": bench(lambda: m.ema_traces_fwd(x64, alpha)),
                  "sel_fwd": bench(lambda: m.linear_scan_fwd(a, x))}
    print("old", res["old"])
    with open(os.environ["OUT"] + "/exp1.json", "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
