"""The CUDA scan benchmark's helpers, on CPU: the module imports without CUDA or Triton,
``host_us`` times the calls it is given (no timing is asserted), the grid's shapes, verdict and
plot, and the CLI's checks on --grid and --tag."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import replace

import pytest

import torch

from emaprobe.cli import main
from emaprobe.experiments import bench_scan
from emaprobe.experiments import bench_scan_cuda as bench
from emaprobe.experiments.common import check_tag
from emaprobe.utils import read_json


def test_host_us_calls_fn_each_round_and_syncs_around_rounds():
    calls, syncs = [], []
    us = bench.host_us(lambda: calls.append(1), calls=10, rounds=3, sync=lambda: syncs.append(1))
    assert len(calls) == 10 * (3 + 1)  # one warm-up round, then three timed
    assert len(syncs) == 2 * (3 + 1)
    assert us >= 0.0


def test_host_windows_open_each_window_with_the_gauge_and_time_every_call(monkeypatch):
    slept, grad = [], []
    monkeypatch.setattr(bench.time, "sleep", slept.append)
    monkeypatch.setattr(bench, "host_us", lambda fn, calls: (fn(), float(calls))[1])
    windows = bench.host_windows({"a": (lambda: grad.append(torch.is_grad_enabled()), 7, False),
                                  "b": (lambda: grad.append(torch.is_grad_enabled()), 3, True)}, windows=3, gap_s=0.1)
    assert [sorted(w) for w in windows] == [["a", "b", "gauge_ms"]] * 3
    assert [(w["a"], w["b"]) for w in windows] == [(7.0, 3.0)] * 3 and all(w["gauge_ms"] > 0 for w in windows)
    assert slept == [0.1, 0.1] and grad == [False, True] * 3  # autograd as each entry asks, per window


def test_host_overhead_verdict_against_the_targets():
    windows = [dict(gauge_ms=6.2, public_ema_fwd=20.0, public_sel_fwd=24.0),
               dict(gauge_ms=11.6, public_ema_fwd=33.0, public_sel_fwd=41.0),
               dict(gauge_ms=6.4, public_ema_fwd=21.0, public_sel_fwd=24.5)]
    row = dict(B=16, T=2048, D=768, host_us_public_ema_fwd=20.0, host_us_public_sel_fwd=24.0,
               host_us_public_ema_fwd_median=21.0, host_us_public_sel_fwd_median=24.5, host_windows=windows,
               public_ema_fwd_eager_b2b_ms=0.070,
               public_ema_fwd_graph_ms=0.061, x_public_ema_fwd_eager_vs_graph=0.070 / 0.061,
               host_us_public_ema_fwdbwd=50.0, x_public_ema_fwdbwd_eager_vs_graph=1.1)
    line = bench.host_overhead_verdict(row)
    assert line.endswith("1.10x") and ": met in the fastest window;" in line
    assert "held in 2 of 3 windows" in line and "gauge 6.2-11.6 ms" in line
    for key in ("host_us_public_ema_fwd", "host_us_public_sel_fwd"):  # each public op is held to the target
        assert "NOT met" in bench.host_overhead_verdict(dict(row, **{key: bench.HOST_US_TARGET + 1}))
    assert "NOT met" in bench.host_overhead_verdict(dict(row, x_public_ema_fwd_eager_vs_graph=1.31))
    # the forward+backward's peers, named with their figures where the row has them
    peers = dict(row, host_us_launchers_ema_fwdbwd=30.0, x_launchers_ema_fwdbwd_eager_vs_graph=1.03,
                 host_us_torch_mul_fwdbwd=80.0, x_torch_mul_fwdbwd_eager_vs_graph=2.07)
    assert bench.host_overhead_verdict(peers).endswith(
        "1.10x (without autograd 30.0 us, 1.03x; the autograd engine alone (x * 2) 80.0 us, 2.07x)")
    assert "host us" in bench.format_table([dict(row, ours_ema_fwd_ms=0.06, floor_fwd_ms=0.05, x_ema_fwd_vs_floor=1.2,
                                                 x_ema_fwdbwd_vs_floor=1.3, x_sel_fwd_vs_floor=1.2)], "card")


def test_grid_shapes_cover_long_t_and_wide_d_at_the_least_batch():
    shapes = bench.grid_shapes()
    assert {T for _, T, _ in shapes} == set(bench.GRID_TS) and max(bench.GRID_TS) == 65536
    assert {D for _, _, D in shapes} == set(bench.GRID_DS) and {256, 4096} <= set(bench.GRID_DS)
    for B, T, D in shapes:
        assert B * T * D >= bench.GRID_MIN_ELEMS
        assert B == 1 or (B // 2) * T * D < bench.GRID_MIN_ELEMS  # no bigger than it must be
        assert B & (B - 1) == 0
    assert bench.grid_shapes((3,), (5,), 100) == [(8, 3, 5)]


def _grid_rows(ema=(1.1, 1.2), sel=(1.25, 1.4), stream=None):
    rows = [dict(B=1, T=T, D=D, x_ema_fwd_vs_floor=e, x_sel_fwd_vs_floor=s)
            for (T, D), e, s in zip(((512, 256), (65536, 4096)), ema, sel)]
    for r, p in zip(rows, stream or ()):
        r.update(x_stream_ema_vs_floor=p, x_stream_sel_vs_floor=p + 0.01)
    return rows


def test_grid_verdict_names_the_worst_shape_and_the_misses():
    lines = bench.grid_verdict(_grid_rows()).splitlines()
    assert lines[0].startswith("EMA forward: worst 1.20x") and lines[0].endswith("0 of 2 shapes above 1.3x: met")
    assert "1x65536x4096" in lines[1] and lines[1].endswith("1 of 2 shapes above 1.3x: NOT met")
    assert "streaming" not in lines[0]  # rows without the peer (older files)
    lines = bench.grid_verdict(_grid_rows(stream=(1.05, 1.12))).splitlines()
    assert "(a streaming kernel of the same bytes: 1.05-1.12x); 0 of 2" in lines[0]
    assert "1.06-1.13x); 1 of 2" in lines[1]


@pytest.mark.parametrize("stream", [None, (1.05, 1.12)], ids=["no-peer", "stream-peer"])
def test_plot_grid_draws_from_rows_without_a_gpu(tmp_path, stream):
    bench.plot_grid(_grid_rows(stream=stream), "card", tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_adds_a_host_panel_for_the_row_with_host_windows(tmp_path, monkeypatch):
    row = dict(B=16, T=2048, D=768, floor_fwd_ms=0.047, floor_fwdbwd_ms=0.095, ours_ema_fwd_ms=0.06,
               ours_ema_fwdbwd_ms=0.15)
    windows = [dict(gauge_ms=6.3, public_ema_fwd=16.0, public_sel_fwd=21.0),
               dict(gauge_ms=11.4, public_ema_fwd=27.0, public_sel_fwd=35.0)]
    bench.plot([row, dict(row, B=8, host_windows=windows)], "card", tmp_path / "scan.png")
    assert (tmp_path / "scan.png").read_bytes()[:4] == b"\x89PNG"
    drawn = []
    monkeypatch.setattr(bench, "_plot_host_windows", lambda ax, r: drawn.append(r["B"]))
    bench.plot([row, dict(row, B=8, host_windows=windows)], "card", tmp_path / "scan.png")
    bench.plot([row], "card", tmp_path / "scan.png")  # no host figures: no third panel
    assert drawn == [8]


def test_plot_adds_a_gated_panel_for_rows_with_gated_figures(tmp_path, monkeypatch):
    row = dict(B=16, T=2048, D=768, floor_fwd_ms=0.047, floor_fwdbwd_ms=0.095, ours_ema_fwd_ms=0.06,
               ours_ema_fwdbwd_ms=0.15)
    gated = dict(floor_gated_fwd_ms=0.12, floor_gated_fwdbwd_ms=0.36, ours_gated_fwd_ms=0.22,
                 ours_gated_fwdbwd_ms=0.75, composed_gated_fwd_ms=2.3, composed_gated_fwdbwd_ms=5.8)
    windows = [dict(gauge_ms=6.3, public_ema_fwd=16.0, public_sel_fwd=21.0)]
    panels = []
    monkeypatch.setattr(bench, "_plot_gated", lambda ax, rows, labels: panels.append(("gated", len(rows))))
    monkeypatch.setattr(bench, "_plot_host_windows", lambda ax, r: panels.append(("host", r["B"])))
    bench.plot([dict(row, **gated), dict(row, B=8, host_windows=windows)], "card", tmp_path / "scan.png")
    bench.plot([row], "card", tmp_path / "scan.png")  # rows from before the gated figures: no such panel
    assert panels == [("gated", 2), ("host", 8)]
    monkeypatch.undo()
    bench.plot([dict(row, **gated), dict(row, B=8, host_windows=windows)], "card", tmp_path / "scan.png")
    assert (tmp_path / "scan.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("args", "message"), [
    (["--grid"], "add --device cuda"),
    (["--tag", "one"], "add --device cuda"),
    (["--device", "cuda", "--grid", "--shape", "1x8x8"], "add --tag"),
    (["--sweep"], "add --device cuda"),
    (["--grid", "--resume"], "add --device cuda"),
    (["--device", "cuda", "--resume"], "add --grid"),
])
def test_bench_scan_grid_and_tag_misuse_is_named(args, message, capsys):
    assert main(["bench", "scan", *args]) == 2
    assert message in capsys.readouterr().err


def test_bench_scan_grid_times_the_shapes_asked_for(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "run_grid", lambda **kw: asked.append(kw))
    monkeypatch.setattr(bench_scan, "memory_bytes", lambda device: 2**30)  # (no CUDA device here to ask)
    assert main(["bench", "scan", "--device", "cuda", "--grid", "--shape", "2x16x8", "--shape", "1x32x4",
                 "--tag", "two"]) == 0
    assert main(["bench", "scan", "--device", "cuda", "--grid"]) == 0
    assert main(["bench", "scan", "--device", "cuda", "--grid", "--sweep", "--tag", "sweep"]) == 0
    assert [(kw["shapes"], kw["tag"], kw["sweep"]) for kw in asked] == [
        ([(2, 16, 8), (1, 32, 4)], "two", False), (None, None, False), (None, "sweep", True)]


def test_run_grid_names_its_files_by_card_and_tag_and_records_its_shapes(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "_checked_start", lambda alphas: (None, "Some Card", 1e12, {}))
    row = dict(ours_ema_fwd_ms=0.05, ours_sel_fwd_ms=0.04, x_ema_fwd_vs_floor=1.2, x_sel_fwd_vs_floor=1.25,
               x_stream_ema_vs_floor=1.05, x_stream_sel_vs_floor=1.08)
    monkeypatch.setattr(bench, "grid_row", lambda ts, shape, alphas, bw: dict(row, B=shape[0], T=shape[1], D=shape[2]))
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__="x"))  # what the JSON records
    result = bench.run_grid(out_dir=tmp_path, shapes=[(2, 16, 8)], tag="t2")
    assert result["grid"] == {"shapes": ["2x16x8"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan_grid_some-card_t2.json", "scan_grid_some-card_t2.png"]
    assert bench.run_grid(shapes=[(2, 16, 8)])["grid"] == {"shapes": ["2x16x8"]}
    with pytest.raises(ValueError, match="letters, digits"):
        bench.run_grid(shapes=[(2, 16, 8)], tag="../x")
    # --sweep: each shape's variants, on the card's SM count, go into the same JSON; a plain grid keeps none
    assert "sweep" not in result
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(multi_processor_count=132))
    swept = dict(B=2, T=16, D=8, kernel="sel", variant="default", ms=1.0, vs_default=1.0, x_vs_floor=1.2,
                 max_diff=0.0, wrong=False)
    monkeypatch.setattr(bench, "grid_sweep", lambda ts, shape, alphas, bw, sms: [dict(swept, sms=sms)])
    result = bench.run_grid(out_dir=tmp_path, shapes=[(2, 16, 8)], tag="sw", sweep=True)
    assert result["sweep"] == [dict(swept, sms=132)] and [v[0] for v in result["sweep_variants"]][0] == "ema"
    assert (tmp_path / "scan_grid_some-card_sw.png").exists()


def _fake_grid(monkeypatch, measured: list, fail_at=None, sha="aaa"):
    """run_grid on CPU: a card, rows of made-up figures (``measured`` lists the shapes timed, and the shape
    ``fail_at`` raises, as a run cut off would stop), the sweep one default row a shape."""
    monkeypatch.setattr(bench, "_checked_start", lambda alphas: (None, "Some Card", 1e12, {}))
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__="x"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(multi_processor_count=132))
    monkeypatch.setenv("EMAPROBE_GIT_SHA", sha)

    def grid_row(ts, shape, alphas, bw):
        if shape == fail_at:
            raise KeyboardInterrupt
        measured.append(shape)
        return dict(B=shape[0], T=shape[1], D=shape[2], ours_ema_fwd_ms=0.05, ours_sel_fwd_ms=0.04,
                    x_ema_fwd_vs_floor=1.2, x_sel_fwd_vs_floor=1.25, x_stream_ema_vs_floor=1.05,
                    x_stream_sel_vs_floor=1.08)

    monkeypatch.setattr(bench, "grid_row", grid_row)
    monkeypatch.setattr(bench, "grid_sweep", lambda ts, shape, alphas, bw, sms: [dict(
        B=shape[0], T=shape[1], D=shape[2], kernel="ema", variant="default", ms=1.0, vs_default=1.0,
        x_vs_floor=1.2, max_diff=0.0, wrong=False)])


def test_run_grid_keeps_what_a_cut_off_run_measured_and_resume_measures_only_the_rest(tmp_path, monkeypatch):
    shapes = [(2, 16, 8), (1, 32, 8), (1, 64, 4)]
    measured: list = []
    _fake_grid(monkeypatch, measured, fail_at=(1, 64, 4))
    with pytest.raises(KeyboardInterrupt):
        bench.run_grid(out_dir=tmp_path, shapes=shapes, tag="g", sweep=True)
    path = tmp_path / "scan_grid_some-card_g.json"
    cut = read_json(path)  # written after each shape: the two measured, the third named unfinished
    assert [(r["B"], r["T"], r["D"]) for r in cut["rows"]] == shapes[:2] and cut["unfinished"] == ["1x64x4"]
    assert len(cut["sweep"]) == 2 and not (tmp_path / "scan_grid_some-card_g.png").exists()

    measured.clear()
    _fake_grid(monkeypatch, measured, sha="bbb")
    result = bench.run_grid(out_dir=tmp_path, shapes=shapes, tag="g", sweep=True, resume=True)
    assert measured == [(1, 64, 4)]  # the kept shapes are not timed again
    assert [(r["B"], r["T"], r["D"]) for r in result["rows"]] == shapes and "unfinished" not in result
    assert [r.get("source", {}).get("git_sha") for r in result["rows"]] == ["aaa", "aaa", None]
    assert [v.get("source", {}).get("git_sha") for v in result["sweep"]] == ["aaa", "aaa", None]
    assert result["resumed_from"] == ["aaa"] and read_json(path) == json.loads(json.dumps(result))
    assert (tmp_path / "scan_grid_some-card_g.png").exists()
    # resumed again: every shape kept, the first source of each row and every earlier run named
    measured.clear()
    _fake_grid(monkeypatch, measured, sha="ccc")
    again = bench.run_grid(out_dir=tmp_path, shapes=shapes, tag="g", sweep=True, resume=True)
    assert measured == [] and again["resumed_from"] == ["aaa", "bbb"]
    assert [r.get("source", {}).get("git_sha") for r in again["rows"]] == ["aaa", "aaa", "bbb"]
    # no file yet: every shape is measured
    measured.clear()
    bench.run_grid(out_dir=tmp_path / "new", shapes=shapes[:1], tag="g", resume=True)
    assert measured == shapes[:1]


@pytest.mark.parametrize(("change", "message"), [
    ({"alphas": [0.5]}, "alphas"),
    ({"card": "Other Card"}, "card"),
    ({"sweep_variants": None}, "sweep variants"),
    ({"benchmark": "lm"}, "not a bench scan --grid result"),
])
def test_run_grid_resume_refuses_a_file_measured_otherwise(tmp_path, monkeypatch, change, message):
    _fake_grid(monkeypatch, [])
    bench.run_grid(out_dir=tmp_path, shapes=[(2, 16, 8)], tag="g", sweep=True)
    path = tmp_path / "scan_grid_some-card_g.json"
    before = dict(read_json(path), **change)
    path.write_text(json.dumps(before))
    with pytest.raises(ValueError, match=message):
        bench.run_grid(out_dir=tmp_path, shapes=[(2, 16, 8)], tag="g", sweep=True, resume=True)
    assert read_json(path) == before  # nothing lost
    with pytest.raises(ValueError, match="needs an output folder"):
        bench.run_grid(shapes=[(2, 16, 8)], resume=True)


def test_sweep_tiles_vary_the_default_plan_where_it_cuts_time_into_segments():
    from emaprobe.ops.triton import plan

    alphas = (0.5, 0.1, 0.02)
    # one pass by default at 132 SMs: nothing to sweep
    assert bench.sweep_tiles("ema", (16, 2048, 768), alphas, 132) == []
    assert bench.sweep_tiles("sel", (64, 512, 768), alphas, 132) == []
    B, T, D = 1, 65536, 256
    for kernel, table, named in (("ema", plan.EMA_FWD, 6), ("sel", plan.LIN_FWD, 6)):
        tiles = dict(bench.sweep_tiles(kernel, (B, T, D), alphas, 132))
        assert len(tiles) == named == 1 + sum(v[0] == kernel for v in bench.GRID_SWEEP)
        assert tiles["default"] == table[-1]  # the narrow tile, which segments
        assert len(set(tiles.values())) == len(tiles)  # every variant is another tile
    ema = dict(bench.sweep_tiles("ema", (B, T, D), alphas, 132))
    assert ema["seg_stages=4"] == replace(ema["default"], seg_stages=4)

    def nseg(cfg):  # the EMA forward's segments at this shape (bf16 outputs)
        return plan.ema_plan(cfg, B * -(-D // cfg.block), T, alphas, 132, plan.warm_bits(8))[0]

    # warps an SM set the segments through min_programs: fewer at one warp, more at three
    assert nseg(ema["1 warp/SM"]) < nseg(ema["default"]) < nseg(ema["3 warps/SM"])
    sel = dict(bench.sweep_tiles("sel", (B, T, D), alphas, 132))
    assert sel["2 warps/SM"].min_programs * sel["2 warps/SM"].num_warps == 2 * 132
    assert (sel["64ch 1 warp"].block, sel["64ch 1 warp"].num_warps) == (64, 1)


def _fake_scans(wrong_stages: int | None = None, fail=lambda cfg: False):
    """The two launchers' contracts on CPU, from the reference scans: a tile of ``wrong_stages`` stages
    scales its output (a plan that computes something else), one that ``fail`` names raises."""
    from emaprobe.ops import naive_ema_traces, naive_linear_scan

    def check(cfg):
        if fail(cfg):
            raise RuntimeError("out of resources")
        return 1.5 if cfg.stages == wrong_stages else 1.0

    return types.SimpleNamespace(
        ema_traces_fwd=lambda x, alphas, cfg: (naive_ema_traces(x.float(), alphas) * check(cfg), None),
        linear_scan_fwd=lambda a, b, cfg: (naive_linear_scan(a.float(), b.float()) * check(cfg), None))


def test_grid_sweep_times_each_tile_against_its_default_and_keeps_only_right_outputs():
    alphas = (0.5, 0.1, 0.02)
    shape, sms = (1, 1024, 64), 8  # segmented on a GPU of 8 SMs
    timed = []

    def timer(fn):  # each tile timed runs it and is 0.01 ms faster than the one before
        fn()
        timed.append(1)
        return 1.0 - 0.01 * len(timed)

    ts = _fake_scans(wrong_stages=6, fail=lambda cfg: cfg.ct == 16 and cfg.seg_stages == 6)  # the EMA's ct=16
    rows = bench.grid_sweep(ts, shape, alphas, bw=1e9, sms=sms, timer=timer, device="cpu")
    tiles = {k: bench.sweep_tiles(k, shape, alphas, sms) for k in ("ema", "sel")}
    assert [(r["kernel"], r["variant"]) for r in rows] == [(k, n) for k in ("ema", "sel") for n, _ in tiles[k]]
    by = {(r["kernel"], r["variant"]): r for r in rows}
    assert "out of resources" in by["ema", "ct=16"]["error"] and "ms" not in by["ema", "ct=16"]
    assert by["sel", "stages=6"]["wrong"] and by["sel", "stages=6"]["max_diff"] == pytest.approx(0.5, rel=1e-2)
    assert not by["sel", "stages=3"]["wrong"] and by["sel", "stages=3"]["max_diff"] == 0.0
    for k in ("ema", "sel"):
        assert by[k, "default"]["vs_default"] == 1.0
        floor = (8 if k == "ema" else 6) * 1024 * 64 / 1e9 * 1e3
        assert by[k, "default"]["x_vs_floor"] == pytest.approx(by[k, "default"]["ms"] / floor)
    assert len(timed) == sum(len(t) for t in tiles.values()) - 1  # the failed tile is not timed
    # a failing default leaves nothing to compare against: its variants are not run
    rows = bench.grid_sweep(_fake_scans(fail=lambda cfg: cfg == tiles["sel"][0][1]), shape, alphas, 1e9, sms,
                            timer=lambda fn: 1.0, device="cpu")
    assert [r["variant"] for r in rows if r["kernel"] == "sel"] == ["default"] and "error" in rows[-1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_grid_sweep_variants_run_and_agree_with_the_default_plan_on_the_gpu():
    pytest.importorskip("triton", reason="needs Triton")
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    shape = (1, 8192, 256)  # both forwards cut time into segments on a card of 4 SMs or more
    rows = bench.grid_sweep(bench._triton_ops(), shape, (0.5, 0.1, 0.02), bw=1e12, sms=sms,
                            timer=lambda fn: (fn(), 1.0)[1])
    assert {r["kernel"] for r in rows} == {"ema", "sel"}
    assert len(rows) == sum(len(bench.sweep_tiles(k, shape, (0.5, 0.1, 0.02), sms)) for k in ("ema", "sel"))
    assert [r for r in rows if "error" in r or r["wrong"]] == []


def test_sweep_best_takes_a_variant_only_past_the_noise_and_never_a_wrong_one():
    def row(variant, ms, wrong=False, kernel="sel", T=8192):
        return dict(B=1, T=T, D=256, kernel=kernel, variant=variant, ms=ms, vs_default=ms, x_vs_floor=1.2 * ms,
                    max_diff=0.5 if wrong else 0.0, wrong=wrong)

    rows = [row("default", 1.0), row("a", 0.995), row("b", 0.97), row("c", 0.90, wrong=True),
            row("default", 1.0, T=2048), row("a", 0.995, T=2048),
            row("default", 1.0, kernel="ema"), {**row("x", 1.0, kernel="ema"), "error": "boom"}]
    del rows[-1]["ms"]
    best = bench.sweep_best(rows)
    assert {k: r["variant"] for k, r in best.items()} == {("sel", 1, 8192, 256): "b", ("sel", 1, 2048, 256): "default",
                                                          ("ema", 1, 8192, 256): "default"}
    line = bench.sweep_verdict(rows)
    assert "selective forward: a variant beat the default at 1 of 2 segmented shapes (1x8192x256 b 0.970)" in line
    assert "worst time / floor 1.200x by default, 1.200x with the fastest plan per shape" in line
    assert "EMA forward: a variant beat the default at 0 of 1" in line
    assert "not counted: sel 1x8192x256 c (wrong); ema 1x8192x256 x (error)" in line
    assert bench.sweep_verdict([]).count("no segmented shape swept") == 2


def test_plot_grid_adds_the_fastest_plans_below_when_swept(tmp_path):
    rows = [dict(B=1, T=T, D=256, x_ema_fwd_vs_floor=1.2, x_sel_fwd_vs_floor=1.1, x_stream_ema_vs_floor=1.0,
                 x_stream_sel_vs_floor=1.0) for T in (2048, 8192)]
    sweep = [dict(B=1, T=8192, D=256, kernel=k, variant=v, ms=ms, vs_default=ms, x_vs_floor=ms, max_diff=0.0,
                  wrong=False) for k in ("ema", "sel") for v, ms in (("default", 1.2), ("stages=3", 1.1))]
    bench.plot_grid(rows, "card", tmp_path / "plain.png")
    bench.plot_grid(rows, "card", tmp_path / "swept.png", sweep)
    from PIL import Image

    plain, swept = (Image.open(tmp_path / f"{n}.png").size for n in ("plain", "swept"))
    assert swept[1] > 1.5 * plain[1]  # two rows of panels


def test_tags_become_file_names_only_when_safe():
    check_tag(None)
    check_tag("host-1_a")
    with pytest.raises(ValueError, match="letters, digits"):
        check_tag("../x")


def test_write_puts_the_json_and_the_drawing_beside_each_other(tmp_path, capsys):
    drawn = []
    bench.write_result(tmp_path / "scan_grid_card", {"rows": [1]}, drawn.append)
    assert (tmp_path / "scan_grid_card.json").read_text().count("rows") == 1
    assert drawn == [tmp_path / "scan_grid_card.png"]
    assert capsys.readouterr().out.count("wrote") == 2


def test_sweep_configs_are_valid_tiles_and_cover_few_warp_launches():
    from emaprobe.experiments.bench_scan_cuda import SWEEP, SWEEP_FEW_WARPS, sweep_configs
    from emaprobe.ops.triton.plan import TileConfig  # pure Python: no Triton needed

    cfgs = sweep_configs(TileConfig)
    assert len(cfgs) == len(SWEEP) + len(SWEEP_FEW_WARPS) == len(set(cfgs))
    assert all(c.block % (32 * c.vec * c.num_warps) == 0 for c in cfgs)
    few = cfgs[len(SWEEP):]
    assert any(c.warmup is False for c in few) and max(c.stages for c in few) >= 8
    assert {c.block for c in few} >= {32, 64, 128}


def test_gated_floors_count_the_bytes_each_pass_must_move():
    # B*T*D = 1000 token-channels, S = 4, 1e9 bytes a second: forward 2 logits + h per timescale (6 bytes)
    # and x once (2 bytes over S); backward 12 bytes per timescale and x read + dx written once (4 over S)
    fwd, fwdbwd = bench.gated_floors(1000, 4, 1e9)
    assert fwd == pytest.approx((6 * 4 + 2) * 1000 / 1e9 * 1e3)
    assert fwdbwd - fwd == pytest.approx((12 * 4 + 4) * 1000 / 1e9 * 1e3)


def test_bench_gated_times_the_fused_form_and_its_composed_peer(monkeypatch):
    """The gated rows with PyTorch standing in for the kernels and a timer that runs each call twice: the
    fused form and its composed peer are each timed forward and forward + backward, the fused one under
    autograd in the second, and the ratios are to the floors."""
    from types import SimpleNamespace

    from emaprobe.ops import gated_scan, linear_scan

    timed, grads = [], []

    def fake_bench(fn, name="", rep=100):
        fn()
        fn()
        timed.append(name)
        return 0.5

    def fused(lg, x, db, gb):
        h = gated_scan(lg, x, db, gb, backend="torch")
        grads.append(lg.requires_grad)
        return h, None

    ts = SimpleNamespace(
        gated_scan_fwd=lambda lg, x, db, gb: (gated_scan(lg, x, db, gb, backend="torch"), None),
        fused_gated_scan=fused,
        fused_linear_scan=lambda a, b, out_dtype=None: (linear_scan(a, b, backend="torch").to(out_dtype), None))
    monkeypatch.setattr(bench, "_bench", fake_bench)
    B, T, D, alphas = 2, 9, 4, (0.5, 0.1, 0.02)
    x = torch.randn(B, T, D)
    row = bench.bench_gated(ts, x, alphas, bw=1e9, gout=torch.randn(B, T, len(alphas), D))
    assert timed == ["ours_gated_fwd", "composed_gated_fwd", "ours_gated_fwdbwd", "composed_gated_fwdbwd"]
    assert grads == [True, True]  # the fused form ran with autograd, twice
    floors = bench.gated_floors(B * T * D, 3, 1e9)
    assert (row["floor_gated_fwd_ms"], row["floor_gated_fwdbwd_ms"]) == floors
    assert row["x_gated_fwd_vs_floor"] == pytest.approx(0.5 / floors[0])
    assert row["x_gated_fwdbwd_vs_floor"] == pytest.approx(0.5 / floors[1])
    table = bench.format_table([dict(B=B, T=T, D=D, x_ema_fwd_vs_floor=1.2, x_ema_fwdbwd_vs_floor=1.3,
                                     x_sel_fwd_vs_floor=1.25, **row)], "card")
    assert "gated f+b" in table and "composed f+b" in table and f"{0.5 / floors[1]:.2f}x" in table
    # a row from before the gated figures (older JSON) still prints, with dashes
    assert " - " in bench.format_table([dict(B=B, T=T, D=D, x_ema_fwd_vs_floor=1.2, x_ema_fwdbwd_vs_floor=1.3,
                                             x_sel_fwd_vs_floor=1.25)], "card")
