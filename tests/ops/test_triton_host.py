"""The Triton scans' host code on CPU: launch plans and coefficient tensors made once per key.

The kernels do not run here: each is replaced by a recorder (``triton_host_harness``), and where
Triton is not installed a stand-in lets the modules import. What is checked is what the kernels
would receive: a plan taken from the cache launches exactly what a plan built afresh launches
(the kernels' results are then unchanged; test_triton_scan.py checks those against float64 on a
GPU), a second call makes no coefficient tensor and allocates only its outputs, and different
keys get different entries.
"""

from __future__ import annotations

import inspect
import threading

import pytest
import torch
from triton_host_harness import Recorder, canonical, filled_empty, load_triton_ops, record

from emaprobe.ops.triton import cache, plan

ALPHAS = (0.5, 0.1, 0.02)
SIX = (0.9, 0.5, 0.1, 0.02, 0.01, 1.0)  # two launches of at most 4 timescales
SPLIT = plan.TileConfig(ct=16, block=64, num_warps=1, split=True)
WARM = plan.TileConfig(ct=16, block=64, split=True, warmup=True, min_programs=8)
TWO_PASS = plan.TileConfig(ct=16, block=64, split=True, warmup=False, min_programs=8)
SMS = 132


@pytest.fixture
def ops():
    # per test: a stand-in Triton stays in sys.modules only while a test that needs it runs
    ema, lin, undo = load_triton_ops()
    yield ema, lin
    undo()


@pytest.fixture(autouse=True)
def empty_stores():
    cache.clear()
    yield
    cache.clear()


def _count_calls(monkeypatch, name: str) -> list:
    calls: list = []
    real = getattr(torch, name)

    def counted(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(torch, name, counted)
    return calls


def _compiling(monkeypatch):
    """What the stores see under torch.compile: every lookup builds afresh."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)


# ---------------------------------------------------------------------------- the store itself


def test_store_returns_one_value_per_key_and_stays_bounded(monkeypatch):
    made = []

    def build(n):
        made.append(n)
        return torch.zeros(n)

    first = cache.cached("t", build, 3)
    assert cache.cached("t", build, 3) is first and made == [3]
    assert cache.cached("t", build, 4) is not first and made == [3, 4]
    monkeypatch.setattr(cache, "MAX_ENTRIES", 2)
    cache.cached("t", build, 5)  # the oldest entry (3) goes
    assert list(cache.store("t")) == [(4,), (5,)]
    cache.clear()
    assert cache.store("t") == {}


def test_store_is_bypassed_while_compiling(monkeypatch):
    _compiling(monkeypatch)
    a, b = cache.cached("t", torch.zeros, 3), cache.cached("t", torch.zeros, 3)
    assert a is not b and cache.store("t") == {}


def test_dynamo_traces_the_builder_not_the_store():
    """Under torch.compile (whole graph, no break) the builder is traced and the store stays empty."""

    def f(x):
        return x * cache.cached("t", lambda n: torch.full((n,), 2.0), 3)

    x = torch.ones(3)
    torch._dynamo.reset()
    got = torch.compile(f, backend="eager", fullgraph=True)(x)
    assert torch.equal(got, 2 * x) and cache.store("t") == {}
    assert torch.equal(f(x), 2 * x) and len(cache.store("t")) == 1  # eager: made once, kept


def test_torch_backend_alpha_tensor_made_once_per_alphas_and_device():
    from emaprobe.ops import scan

    cpu, meta = torch.device("cpu"), torch.device("meta")
    t = scan._alpha_tensor(ALPHAS, cpu)
    assert scan._alpha_tensor(ALPHAS, cpu) is t and t.dtype == torch.float64 and t.tolist() == list(ALPHAS)
    assert scan._alpha_tensor((0.5,), cpu) is not t
    assert scan._alpha_tensor(ALPHAS, meta).device == meta


# ---------------------------------------------------------------------------- coefficients


def test_coefs_made_once_per_alphas_and_device(ops, monkeypatch):
    ema, _ = ops
    cpu, meta = torch.device("cpu"), torch.device("meta")
    made = _count_calls(monkeypatch, "tensor")
    c = ema._coefs(ALPHAS, cpu)
    assert len(made) == 3
    assert ema._coefs(ALPHAS, cpu) is c and len(made) == 3  # the second call makes nothing
    assert c.dec64.dtype == torch.float64 and c.dec.dtype == c.alp.dtype == torch.float32
    assert c.dec64.tolist() == [1.0 - a for a in ALPHAS]
    assert torch.equal(c.alp, torch.tensor(ALPHAS, dtype=torch.float32))
    assert c.dec_col.shape == (1, 3, 1) and c.dec_col.data_ptr() == c.dec.data_ptr()
    other = ema._coefs((0.5, 0.1), cpu)
    assert other is not c and other.dec.tolist() == [0.5, pytest.approx(0.9)]
    on_meta = ema._coefs(ALPHAS, meta)
    assert on_meta is not c and on_meta.dec.device == meta
    six = ema._coefs(SIX, cpu)  # one view per group of 4 timescales, into the same tensors
    assert [g[0].data_ptr() - six.dec.data_ptr() for g in six.groups] == [0, 4 * 4]
    assert [g[1].numel() for g in six.groups] == [6, 2]


# ---------------------------------------------------------------------------- launches

# (op, B, T, D or feature shape, alphas, cfg, with initial state / final-state gradient)
CASES = [
    ("ema_fwd", 16, 300, 768, ALPHAS, None, False),
    ("ema_fwd", 1, 4097, 33, ALPHAS, SPLIT, True),
    ("ema_fwd", 1, 4097, 33, ALPHAS, WARM, True),
    ("ema_fwd", 1, 4097, 33, ALPHAS, TWO_PASS, False),
    ("ema_fwd", 2, 500, 24, SIX, SPLIT, True),
    ("ema_fwd", 2, 0, 24, ALPHAS, None, True),
    ("ema_bwd", 16, 300, 768, ALPHAS, None, True),
    ("ema_bwd", 1, 4097, 33, ALPHAS, WARM, True),
    ("ema_bwd", 2, 500, 24, SIX, TWO_PASS, False),
    ("lin_fwd", 2, 63, (3, 24), None, None, True),
    ("lin_fwd", 1, 3001, (40,), None, WARM, True),
    ("lin_fwd", 1, 4097, (40,), None, SPLIT, False),
    ("lin_bwd", 2, 500, (2, 128), None, None, True),
    ("lin_bwd", 1, 4097, (40,), None, SPLIT, True),
    ("gated_fwd", 2, 63, (3, 24), None, None, True),
    ("gated_fwd", 1, 3001, (2, 40), None, WARM, False),
    ("gated_bwd", 2, 500, (3, 24), None, None, True),
    ("gated_bwd", 1, 4097, (2, 40), None, SPLIT, False),
]
IDS = [f"{c[0]}-B{c[1]}-T{c[2]}-{c[3]}-S{0 if c[4] is None else len(c[4])}-{c[5] and c[5].warmup}-{c[6]}"
       for c in CASES]


def _call(ops, monkeypatch, case, dtype=torch.float32, sms=SMS):
    """Run one launcher on fixed inputs with its kernels recorded -> (canonical launches, outputs)."""
    ema, lin = ops
    op, B, T, D, alphas, cfg, with_state = case
    g = torch.Generator().manual_seed(0)
    if op.startswith("ema"):
        S = len(alphas)
        state = torch.randn(B, S, D, generator=g) if with_state else None
        log = record(monkeypatch.setattr, ema, "ema", sms)
        if op == "ema_fwd":
            x = torch.randn(B, T, D, generator=g).to(dtype)
            out, hT = ema.ema_traces_fwd(x, alphas, state, cfg=cfg)
            return canonical(log, {"x": x, "h0": state, "out": out, "hT": hT}), (out, hT)
        gh = torch.randn(B, T, S, D, generator=g).to(dtype)
        gx, g0 = ema.ema_traces_bwd(gh, alphas, state, dtype, cfg=cfg)
        return canonical(log, {"gh": gh, "gf": state, "gx": gx, "g0": g0}), (gx, g0)
    if op.startswith("gated"):
        S, Dx = D
        logits = torch.randn(B, T, 2, S, Dx, generator=g).to(dtype)
        x = torch.randn(B, T, Dx, generator=g).to(dtype)
        ba, bg = torch.randn(S, Dx, generator=g), torch.randn(S, Dx, generator=g)
        state = torch.randn(B, S, Dx, generator=g) if with_state else None
        log = record(monkeypatch.setattr, lin, "lin", sms)
        named = {"logits": logits, "x": x, "ba": ba, "bg": bg, "h0": state}
        if op == "gated_fwd":
            out, hT = lin.gated_scan_fwd(logits, x, ba, bg, state, cfg=cfg, state=with_state)
            return canonical(log, {**named, "out": out, "hT": hT}), (out,) + ((hT,) if with_state else ())
        gh, h = torch.randn(B, T, S, Dx, generator=g).to(dtype), torch.randn(B, T, S, Dx, generator=g).to(dtype)
        outs = lin.gated_scan_bwd(logits, x, ba, bg, gh, h, state, state, cfg=cfg, state=with_state)
        return canonical(log, {**named, "gh": gh, "h": h, "dl": outs[0], "dx": outs[1]}), outs[:2]
    full = (B, T) + D
    a = (torch.rand(full, generator=g) * 0.5 + 0.5).to(dtype)
    b = torch.randn(full, generator=g).to(dtype)
    state = torch.randn((B,) + D, generator=g) if with_state else None
    log = record(monkeypatch.setattr, lin, "lin", sms)
    if op == "lin_fwd":
        out, hT = lin.linear_scan_fwd(a, b, state, cfg=cfg)
        return canonical(log, {"a": a, "b": b, "h0": state, "out": out, "hT": hT}), (out, hT)
    h = torch.randn(full, generator=g).to(dtype)
    ga, gb, g0 = lin.linear_scan_bwd(a, b, h, state, state, dtype, dtype, cfg=cfg)
    return canonical(log, {"a": a, "gh": b, "h": h, "h0": state, "ga": ga, "gb": gb, "g0": g0}), (ga, gb, g0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cached_plan_launches_what_a_fresh_plan_launches(ops, monkeypatch, case):
    """First call (builds and keeps the plan), second call (takes it from the store) and a call that
    builds afresh, as under torch.compile: the same kernels, grids, arguments and constants."""
    filled_empty(monkeypatch.setattr)
    first, out1 = _call(ops, monkeypatch, case)
    second, out2 = _call(ops, monkeypatch, case)
    assert sum(len(s) for s in cache._STORES.values()) > 0
    with monkeypatch.context() as m:
        _compiling(m)
        fresh, out3 = _call(ops, monkeypatch, case)
    assert first == second == fresh
    meta = [[(o.shape, o.dtype) for o in out] for out in (out1, out2, out3)]
    assert meta[0] == meta[1] == meta[2]
    if case[2] == 0:
        assert first == []  # T = 0: nothing launched


@pytest.mark.parametrize("B,T", [(16, 1024), (2, 8192)], ids=["one-pass", "segments"])
def test_gated_launches_take_the_gated_tile_configs(ops, monkeypatch, B, T):
    """``gated_scan``'s kernels hold more per element than ``linear_scan``'s and run at their own tile
    depths (plan.GATED_FWD / GATED_BWD, chosen as linear_scan's are), with GATED on in every launch."""
    S, D = 3, 768
    for op, defaults in (("gated_fwd", plan.GATED_FWD), ("gated_bwd", plan.GATED_BWD)):
        launches, _ = _call(ops, monkeypatch, (op, B, T, (S, D), None, None, False), dtype=torch.bfloat16)
        want = plan.choose(None, defaults, B, S * D, SMS)
        assert launches and all(dict(kw)["GATED"] and dict(kw)["CT"] == want.ct and dict(kw)["BF"] == want.block
                                for _, _, _, kw in launches)


class _Writes(Recorder):
    """The backward kernel's recorder that also fills some of its outputs, by argument name, where the scan
    launch (STORE_OUT) would write them."""

    def __init__(self, log: list, kernel, fills: dict[str, torch.Tensor]):
        super().__init__("_lin_bwd_kernel", log)
        names = list(getattr(kernel, "arg_names", None) or inspect.signature(kernel.fn).parameters)
        self.at = {name: i for i, name in enumerate(names)}
        self.fills = {self.at[name]: t for name, t in fills.items()}

    def __getitem__(self, grid):
        record_launch = super().__getitem__(grid)

        def launch(*args, **kwargs):
            record_launch(*args, **kwargs)
            if kwargs["STORE_OUT"]:
                for at, t in self.fills.items():
                    args[at].view(t.shape).copy_(t)

        return launch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("S,cfg", [(3, None), (1, None), (2, SPLIT)], ids=["S3", "S1", "S2-segments"])
def test_gated_backward_sums_the_kernels_partial_gradients(ops, monkeypatch, dtype, S, cfg):
    """x (B, T, D) feeds the S groups of ``gated_scan``'s channels (F = (S, D)). The backward's kernel writes
    x's gradient per channel (GX) in x's dtype, so that in bf16 it and the sum over the groups move half the
    bytes of float32, and each program's sums of the two logits' gradients (PB, float32); the call returns
    GX summed over the groups, in x's dtype (one group: GX itself), and PB summed over batch and segments as
    the two biases' gradients."""
    _, lin = ops
    B, T, D = 2, 50 if cfg is None else 4097, 24
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, 2, S, D, generator=g).to(dtype)
    x = torch.randn(B, T, D, generator=g).to(dtype)
    ba, bg = torch.randn(S, D, generator=g), torch.randn(S, D, generator=g)
    gh, h = (torch.randn(B, T, S, D, generator=g).to(dtype) for _ in range(2))
    nseg = cache.cached("gated_bwd", lin._lin_bwd_launch, torch.Size((B, T, S, D)), False, False, False, SMS,
                        cfg, D).nseg
    assert cfg is None or nseg > 1
    gx = torch.randn(B, T, S * D, generator=g).to(dtype)
    pb = torch.randn(B, nseg, 2, S * D, generator=g)
    log: list = []
    monkeypatch.setattr(lin, "_lin_bwd_kernel", _Writes(log, lin._lin_bwd_kernel, {"GX": gx, "PB": pb}))
    monkeypatch.setattr(lin, "sm_count", lambda device: SMS)
    cache.clear()  # the plan above holds the kernel it was built with
    _, dx, dba, dbg, _ = lin.gated_scan_bwd(logits, x, ba, bg, gh, h, cfg=cfg, state=False)
    assert len(log) == 1 + (nseg > 1)
    assert log[-1][2][lin._lin_bwd_kernel.at["GX"]].dtype == dtype  # what the kernel stores into
    assert dx.dtype == dtype and dx.shape == x.shape
    torch.testing.assert_close(dx, gx.view(B, T, S, D).sum(2), rtol=0, atol=0)
    for got, k in ((dba, 0), (dbg, 1)):
        assert got.dtype == torch.float32 and got.shape == (S, D)
        torch.testing.assert_close(got, pb[:, :, k].sum((0, 1)).view(S, D))


@pytest.mark.parametrize("cfg", [None, SPLIT, WARM, TWO_PASS], ids=["default", "split", "warm", "two-pass"])
def test_ema_fwd_launches_follow_the_planner(ops, monkeypatch, cfg):
    """Grid and scalar arguments as ``plan`` gives them, worked out here without the cache."""
    B, T, D = 1, 4097, 33
    launches, _ = _call(ops, monkeypatch, ("ema_fwd", B, T, D, ALPHAS, cfg, True))
    c = plan.choose(cfg, plan.EMA_FWD, B, D, SMS)
    nd = -(-D // c.block)
    nseg, seglen, warm = plan.ema_plan(c, B * nd, T, ALPHAS, SMS)
    two_pass = nseg > 1 and warm is None
    assert len(launches) == 1 + two_pass
    # segments that warm up: the first (none) longer by the others' warm-up cost
    seglen, first = (seglen, seglen) if warm is None else plan.first_segment(T, nseg, seglen, max(warm), c.ct)
    for name, grid, args, kwargs in launches:
        assert grid == (nd, nseg, B)
        assert args[8:] == (T, seglen, first, nseg, 0 if warm is None else max(warm))
        # the row strides are constants of the compiled kernel (immediates in its addresses)
        assert dict(kwargs)["D"] == D and dict(kwargs)["SD"] == 3 * D
    assert dict(launches[-1][3])["WARM"] == (warm is not None) and dict(launches[-1][3])["COMBINE"] == two_pass
    # warm-up segments run their own steps at the config's seg_stages where it has one; else at stages
    deep = warm is not None and c.seg_stages is not None
    assert dict(launches[-1][3])["STAGES"] == (c.seg_stages if deep else c.stages) != 0
    assert dict(launches[-1][3])["WSTAGES"] == c.warm_stages


def test_ema_fwd_deepens_only_the_default_plans_warm_up_segments(ops, monkeypatch):
    """One pass (B16 T300 D768), two passes (B1 T4097 D33) and the backward keep the table's depth;
    the forward's default warm-up segments (B1 T65536 D33) take the narrow config's seg_stages."""
    stages = {}
    for op, B, T, D in (("ema_fwd", 16, 300, 768), ("ema_fwd", 1, 4097, 33), ("ema_fwd", 1, 65536, 33),
                        ("ema_bwd", 1, 65536, 33)):
        launches, _ = _call(ops, monkeypatch, (op, B, T, D, ALPHAS, None, True))
        stages[op, T] = [dict(k)["STAGES"] for _, _, _, k in launches]
    assert stages["ema_fwd", 300] == [plan.choose(None, plan.EMA_FWD, 16, 768, SMS).stages]
    assert stages["ema_fwd", 4097] == [plan.EMA_FWD[-1].stages] * 2  # two passes
    assert stages["ema_fwd", 65536] == [plan.EMA_FWD[-1].seg_stages] != [plan.EMA_FWD[-1].stages]
    assert set(stages["ema_bwd", 65536]) == {plan.EMA_BWD[-1].stages}


@pytest.mark.parametrize("cfg,shape", [(None, (16, 300, 768)), (WARM, (1, 4097, 33)), (TWO_PASS, (1, 4097, 33))],
                         ids=["one-pass", "warm", "two-pass"])
def test_second_call_makes_no_coefficients_and_allocates_only_outputs(ops, monkeypatch, cfg, shape):
    ema, _ = ops
    log = record(monkeypatch.setattr, ema, "ema", SMS)
    x = torch.randn(shape)
    c = plan.choose(cfg, plan.EMA_FWD, shape[0], shape[2], SMS)
    nseg, _, warm = plan.ema_plan(c, shape[0] * -(-shape[2] // c.block), shape[1], ALPHAS, SMS)
    assert (nseg == 1) == (cfg is None) and (warm is not None) == (cfg is WARM)
    ema.ema_traces_fwd(x, ALPHAS, cfg=cfg)
    first = log[:]
    made, allocated = _count_calls(monkeypatch, "tensor"), _count_calls(monkeypatch, "empty")
    log.clear()
    ema.ema_traces_fwd(x, ALPHAS, cfg=cfg)
    assert made == []  # no coefficient tensor
    # the traces and the end states (h_T is a view); pass 1's end states in two passes come from the plan
    assert len(allocated) == 2
    for (_, _, a1, k1), (_, _, a2, k2) in zip(first, log):
        assert all(u is v for u, v in zip(a1[5:8], a2[5:8]))  # the very same coefficient tensors
        assert k1 == k2


# (op, cfg, B, T, D or feature shape): one pass, segments that warm up, two passes
STATELESS = [("ema_fwd", None, 16, 300, 768), ("ema_fwd", WARM, 1, 4097, 33), ("ema_fwd", TWO_PASS, 1, 4097, 33),
             ("ema_bwd", None, 16, 300, 768), ("ema_bwd", WARM, 1, 4097, 33), ("ema_bwd", TWO_PASS, 1, 4097, 33),
             ("lin_fwd", None, 2, 63, (3, 24)), ("lin_fwd", WARM, 1, 3001, (40,)), ("lin_fwd", SPLIT, 1, 4097, (40,)),
             ("lin_bwd", None, 2, 500, (2, 128)), ("lin_bwd", SPLIT, 1, 4097, (40,))]


def _launcher(ops, op, cfg, B, T, D, state):
    """-> ("ema" or "lin", its module, the inputs (u, v), a call of launcher ``op`` on them)."""
    ema, lin = ops
    g = torch.Generator().manual_seed(0)
    which, mod = ("ema", ema) if op.startswith("ema") else ("lin", lin)
    full = {"ema_fwd": (B, T, D), "ema_bwd": (B, T, 3, D)}.get(op) or (B, T) + D
    u, v = torch.randn(full, generator=g), torch.rand(full, generator=g) * 0.5 + 0.5
    run = {"ema_fwd": lambda: ema.ema_traces_fwd(u, ALPHAS, cfg=cfg, state=state),
           "ema_bwd": lambda: ema.ema_traces_bwd(u, ALPHAS, cfg=cfg, state=state),
           "lin_fwd": lambda: lin.linear_scan_fwd(v, u, cfg=cfg, state=state),
           "lin_bwd": lambda: lin.linear_scan_bwd(v, u, u, cfg=cfg, state=state)}[op]
    return which, mod, (u, v), run


def _launch_stateless(ops, monkeypatch, op, cfg, B, T, D, state):
    """One launcher called twice (the second from the cached plan) -> (its launches, canonical, the
    second call's torch.empty calls, its returned state)."""
    which, mod, (u, v), run = _launcher(ops, op, cfg, B, T, D, state)
    log = record(monkeypatch.setattr, mod, which, SMS)
    run()
    with monkeypatch.context() as m:
        allocated = _count_calls(m, "empty")
        log.clear()
        outs = run()
    named = {"u": u, "v": v, "state": outs[-1]} | {f"out{i}": o for i, o in enumerate(outs[:-1])}
    return canonical(log, named), allocated, outs[-1]


@pytest.mark.parametrize("case", STATELESS, ids=[f"{c[0]}-{c[1] and c[1].warmup}-T{c[3]}" for c in STATELESS])
def test_a_state_nobody_asked_for_is_neither_allocated_nor_stored(ops, monkeypatch, case):
    """``state=False`` (the public ops' default, ``return_state=False``): one allocation fewer a call,
    None back in the state's place, and the launches that would store h_T (g_0 backwards) are told
    not to (STORE_STATE); pass 1's segment states, which the scan reads, are still stored, and
    every other argument and constant is the same."""
    filled_empty(monkeypatch.setattr)
    with_state, alloc_with, st = _launch_stateless(ops, monkeypatch, *case, state=True)
    without, alloc_without, none = _launch_stateless(ops, monkeypatch, *case, state=False)
    assert st is not None and none is None
    assert len(alloc_without) == len(alloc_with) - 1
    assert len(with_state) == len(without) >= 1
    for (n1, g1, a1, k1), (n2, g2, a2, k2) in zip(with_state, without):
        k1, k2 = dict(k1), dict(k2)
        assert (n1, g1) == (n2, g2) and k1["STORE_STATE"] is True
        pass1 = not k1["STORE_OUT"]  # pass 1 of two writes only segment states, which pass 2 reads
        assert k2.pop("STORE_STATE") is pass1 and k1.pop("STORE_STATE")
        assert k1 == k2
        # only the state's own buffer is swapped for a stand-in
        assert [x for x, y in zip(a1, a2) if x != y] == [x for x in a1 if isinstance(x, tuple) and x[0] == "state"]


# launchers with scratch (segments in two passes, or warm-ups and their marks): (op, cfg, B, T, features)
SCRATCH = [("ema_fwd", TWO_PASS, 1, 4097, 33), ("ema_bwd", TWO_PASS, 1, 4097, 33),
           ("lin_fwd", WARM, 1, 3001, (40,)), ("lin_fwd", SPLIT, 1, 4097, (40,)), ("lin_bwd", SPLIT, 1, 4097, (40,))]


def _scratch_call(ops, monkeypatch, op, cfg, B, T, D):
    """One call of a launcher -> (its launches' tensor arguments that are none of the call's inputs or
    outputs, by identity of their storage; torch.empty calls)."""
    which, mod, (u, v), run = _launcher(ops, op, cfg, B, T, D, False)
    log = record(monkeypatch.setattr, mod, which, SMS)
    with monkeypatch.context() as m:
        allocated = _count_calls(m, "empty")
        outs = run()
    coefs = mod._coefs(ALPHAS, u.device)[:3] if which == "ema" else ()
    known = {t.untyped_storage().data_ptr() for t in (u, v, *outs, *coefs) if t is not None}
    found = {a.untyped_storage().data_ptr() for _, _, args, _ in log for a in args
             if isinstance(a, torch.Tensor)} - known
    return found, allocated


@pytest.mark.parametrize("case", SCRATCH, ids=[f"{c[0]}-{c[1].warmup}-T{c[3]}" for c in SCRATCH])
def test_scratch_is_made_once_per_thread_and_afresh_while_compiling(ops, monkeypatch, case):
    """A launcher's scratch (what one launch writes and the next reads, never returned) is made by its first
    call and handed to later calls on the same stream and thread without an allocation; another thread gets
    its own (two threads may share a stream, and their launches interleave), and so does every call under
    torch.compile, as the plans themselves are built afresh there (``cache.scratch``)."""
    first, alloc_first = _scratch_call(ops, monkeypatch, *case)
    second, alloc_second = _scratch_call(ops, monkeypatch, *case)
    assert first and second == first
    assert len(alloc_second) == len(alloc_first) - len(first) >= 1  # the outputs alone
    other: list = []
    worker = threading.Thread(target=lambda: other.append(_scratch_call(ops, monkeypatch, *case)))
    worker.start()
    worker.join()
    assert other[0][0] and not other[0][0] & first and len(other[0][1]) == len(alloc_first)
    assert _scratch_call(ops, monkeypatch, *case)[0] == first  # this thread's are still its own
    with monkeypatch.context() as m:
        _compiling(m)
        compiled, alloc_compiled = _scratch_call(ops, monkeypatch, *case)
    assert compiled and not compiled & first and len(alloc_compiled) == len(alloc_first)


def test_scratch_store_stays_bounded():
    owner: dict = {}
    made = []
    for tag in range(cache.MAX_SCRATCH + 3):
        cache.scratch(owner, lambda: made.append(1) or torch.zeros(3), torch.device("cpu"), str(tag))
    assert len(made) == cache.MAX_SCRATCH + 3 and len(owner) == cache.MAX_SCRATCH
    assert ("0", "cpu", None, None) not in {k[:4] for k in owner}  # the oldest went first
    t = cache.scratch(owner, lambda: made.append(1) or torch.zeros(3), torch.device("cpu"), "5")
    assert len(made) == cache.MAX_SCRATCH + 3 and t is owner[("5", "cpu", None, None, threading.get_ident())]


def test_plans_distinct_per_key_and_shared_across_dtypes(ops, monkeypatch):
    """Shape, alphas, initial state or not, tile config, SM count and the bits the warm-ups keep each
    make their own plan; beyond those bits the dtype does not enter the plan (Triton specializes on it),
    and outputs keep their dtypes."""
    filled_empty(monkeypatch.setattr)
    base = ("ema_fwd", 1, 4097, 33, ALPHAS, None, True)
    want, _ = _call(ops, monkeypatch, base)
    fwd = cache.store("ema_fwd")
    assert len(fwd) == 1
    launches64, (out64, _) = _call(ops, monkeypatch, base, dtype=torch.float64)
    assert len(fwd) == 1 and out64.dtype == torch.float64  # float32's warm-ups: the same plan
    assert launches64[0][2][0] == ("x", 0, "torch.float64")  # the kernel gets the input itself
    launches16, (out16, hT16) = _call(ops, monkeypatch, base, dtype=torch.bfloat16)
    assert len(fwd) == 2 and out16.dtype == torch.bfloat16 and hT16.dtype == torch.float32  # 16 bits' plan
    assert launches16[0][2][0] == ("x", 0, "torch.bfloat16")
    variants = [("ema_fwd", 1, 4000, 33, ALPHAS, None, True), ("ema_fwd", 1, 4097, 33, (0.5,), None, True),
                ("ema_fwd", 1, 4097, 33, ALPHAS, None, False), ("ema_fwd", 1, 4097, 33, ALPHAS, WARM, True),
                ("ema_fwd", 2, 4097, 33, ALPHAS, None, True), ("ema_fwd", 1, 4097, 40, ALPHAS, None, True)]
    for i, v in enumerate(variants):
        _call(ops, monkeypatch, v)
        assert len(fwd) == 3 + i
    _call(ops, monkeypatch, base, sms=30)
    assert len(fwd) == 3 + len(variants)
    assert _call(ops, monkeypatch, base)[0] == want  # among them all, the first key's plan is still its own
    assert len(cache.store("ema_coefs")) == 2  # one per alphas on this one device


@pytest.mark.parametrize("op", ["ema_fwd", "ema_bwd"])
def test_warm_ups_keep_the_bits_of_what_the_kernel_writes(ops, monkeypatch, op):
    """bf16 and float16 outputs (traces forward, dx backward) warm up to plan.WARM_MARGIN_BITS under
    their resolution: shorter warm-ups than float32's 24 bits, which float64 keeps too."""
    B, T, D = 1, 4097, 33
    nd = -(-D // WARM.block)
    for dtype, bits in ((torch.float32, 24), (torch.float64, 24), (torch.float16, 19), (torch.bfloat16, 16)):
        launches, (out, _) = _call(ops, monkeypatch, (op, B, T, D, ALPHAS, WARM, True), dtype=dtype)
        assert out.dtype == dtype
        nseg, seglen, warm = plan.ema_plan(WARM, B * nd, T, ALPHAS, SMS, bits)
        assert warm == plan.warm_steps(ALPHAS, WARM.ct, bits) and nseg > 1
        # the forward warms x up once, as long as its slowest timescale needs; the backward each gradient
        warmlens = (max(warm),) if op == "ema_fwd" else (*warm, 0)
        # the forward's D, SD: constants; its first segment longer (``plan.first_segment``)
        head = (T, *plan.first_segment(T, nseg, seglen, max(warm), WARM.ct), nseg) if op == "ema_fwd" else (
            T, D, 3 * D, seglen, nseg)
        assert launches[-1][2][8:] == (*head, *warmlens)
    assert plan.warm_steps(ALPHAS, 1, 16) == [16, 106, 549] and plan.warm_steps(ALPHAS, 1) == [24, 158, 824]


def test_linear_scan_warm_ups_keep_the_bits_of_its_output(ops, monkeypatch):
    """linear_scan's forward: a bf16 or float16 output warms up over ``plan.lin_warm_steps`` of its bits and
    marks for rescans the tiles whose decays multiplied past 2**-bits; float32 and float64 keep 24 bits."""
    B, T, F = 1, 3001, 40
    case = ("lin_fwd", B, T, (F,), None, WARM, True)
    for dtype, bits in ((torch.float32, 24), (torch.float64, 24), (torch.float16, 19), (torch.bfloat16, 16)):
        launches, (out, _) = _call(ops, monkeypatch, case, dtype=dtype)
        assert out.dtype == dtype and [dict(c[3])["WARM"] for c in launches] == [True, False]
        warm = plan.lin_warm_steps(bits, WARM.ct)
        nseg, seglen = plan.warm_plan(WARM, B, T, warm, SMS, plan.LIN_WARM_WARPS_PER_SM)
        assert launches[0][2][12:19] == (T, F, seglen, nseg, warm, 2.0 ** -bits, 1)
        assert launches[1][2][16:18] == (0, 0.0)  # the rescans: no warm-up
    assert plan.lin_warm_steps(16, WARM.ct) < plan.lin_warm_steps(24, WARM.ct)


def test_two_devices_get_their_own_plan_and_coefficients(ops, monkeypatch):
    """A plan holds its device's coefficient tensors: a second device must not reuse them."""
    ema, _ = ops
    cpu, meta = torch.device("cpu"), torch.device("meta")
    p_cpu = ema._ema_fwd_launch(1, 4097, 33, ALPHAS, True, True, cpu, SMS, None)
    p_meta = ema._ema_fwd_launch(1, 4097, 33, ALPHAS, True, True, meta, SMS, None)
    assert p_cpu.groups[0][1].fixed[0].device == cpu and p_meta.groups[0][1].fixed[0].device == meta
    record(monkeypatch.setattr, ema, "ema", SMS)
    ema.ema_traces_fwd(torch.randn(1, 4097, 33), ALPHAS)
    ema.ema_traces_fwd(torch.randn(1, 4097, 33, device=meta), ALPHAS)
    devices = sorted(str(k[6]) for k in cache.store("ema_fwd"))
    assert devices == ["cpu", "meta"]
    assert sorted(str(c.dec.device) for c in cache.store("ema_coefs").values()) == ["cpu", "meta"]


def test_fused_ops_skip_the_autograd_function_only_where_no_gradient_is_recorded(ops, monkeypatch):
    """Without a gradient to record the differentiable ops call the launcher directly: the same
    launches as through the autograd Function, and outputs without a graph."""
    ema, lin = ops
    filled_empty(monkeypatch.setattr)
    x, h0 = torch.randn(2, 500, 24), torch.randn(2, 3, 24)
    a, b = torch.rand(2, 500, 24), torch.randn(2, 500, 24)
    runs = {}
    for mode in ("no_grad", "no_input_needs_grad", "grad"):
        ema_log = record(monkeypatch.setattr, ema, "ema", SMS)
        lin_log = record(monkeypatch.setattr, lin, "lin", SMS)
        xi, ai = (x.clone().requires_grad_(), a.clone().requires_grad_()) if mode == "grad" else (x, a)
        with torch.set_grad_enabled(mode != "no_grad"):
            y, yT = ema.fused_ema_traces(xi, ALPHAS, h0)
            z, zT = lin.fused_linear_scan(ai, b, None)
        assert (y.grad_fn is not None) == (z.grad_fn is not None) == (mode == "grad")
        runs[mode] = (canonical(ema_log, {"x": xi, "h0": h0, "out": y, "hT": yT}),
                      canonical(lin_log, {"a": ai, "b": b, "out": z, "hT": zT}))
    assert runs["no_grad"] == runs["no_input_needs_grad"] == runs["grad"]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_plan_builders_trace_in_one_graph_under_compile(dynamic):
    """Dynamo traces every plan builder (what the launchers run while compiling) without a graph
    break or a warning, with static and with symbolic shapes, and leaves the stores empty."""
    import warnings

    torch.compile(lambda t: t + 1, backend="eager")(torch.ones(1))  # Dynamo's imports, before any stand-in
    ema, lin, undo = load_triton_ops()
    try:
        def plans(x, h):
            B, T, D = x.shape
            p = ema._ema_fwd_launch(B, T, D, ALPHAS, True, True, x.device, SMS, None)
            q = ema._ema_bwd_launch(B, T, 3, D, ALPHAS, False, True, x.device, SMS, WARM)
            r = lin._lin_fwd_launch(h.shape, h.shape, True, True, SMS, None)
            s = lin._lin_bwd_launch(h.shape, True, True, True, SMS, SPLIT)
            return (x * p.groups[0][1].fixed[0].sum() + q.groups[0][1].fixed[6] + p.grid[1] + r.launches[0].fixed[2]
                    + s.nseg)

        torch._dynamo.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compiled = torch.compile(plans, backend="eager", fullgraph=True, dynamic=dynamic)
            inputs = [(torch.randn(1, T, 33), torch.randn(2, T, 40)) for T in (4097, 5000)]
            got = [compiled(x, h) for x, h in inputs]
        assert cache.store("ema_coefs") == {}
        for g, (x, h) in zip(got, inputs):
            assert torch.equal(g, plans(x, h))  # eager, through the stores
    finally:
        torch._dynamo.reset()
        undo()
