"""``emaprobe bench lm --quick`` end to end on CPU: the JSON's fields and the plot (no speed is asserted)."""

from __future__ import annotations

import json

import matplotlib.image
import pytest
import torch

from emaprobe.cli import main
from emaprobe.experiments.bench_lm import (
    MFU_FORMULA,
    PROFILE_STEPS,
    PROFILE_TOP,
    BenchConfig,
    config_of,
    flops_per_token,
    kernel_group,
    peak_flops,
    quick_config,
    versus,
    with_executed,
)
from emaprobe.layers import MIXERS
from emaprobe.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bench_lm_quick_writes_every_row_json_and_png(tmp_path, capsys):
    assert main(["bench", "lm", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "bench_lm_cpu.json").read_text())
    assert (tmp_path / "bench_lm_cpu.png").stat().st_size > 0
    assert res["benchmark"] == "lm" and res["card"] == "cpu" and res["device"].startswith("cpu")
    assert res["git_sha"] and res["torch"] == torch.__version__
    assert res["mfu_formula"] == MFU_FORMULA and "6 N" in res["mfu_formula"]
    assert res["peak_flops"] is None
    rows = res["rows"]
    q = quick_config()
    models = {f"spen-tiny/{m}" for m in MIXERS} | {"gpt-tiny"}
    train = [r for r in rows if r["part"] == "train"]
    gen = [r for r in rows if r["part"] == "generate"]
    assert {r["model"] for r in train} == models == {r["model"] for r in gen}
    assert len(train) == len(models) * len(q.seq_lens)
    assert len(gen) == len(models) * len(q.gen_batches) * len(q.gen_prompts)
    for r in rows:
        assert r["tokens_per_s"] > 0, r
        assert r["compiled"] is False and "error" not in r
    for r in train:
        assert r["B"] == q.tokens_per_step // r["T"] and r["flops_per_token"] > 6 * r["matmul_params"] * 0.99
        assert r["mfu"] is None and r["peak_mem_gib"] is None
    assert out.count("tok/s") == len(rows)  # a progress line per measurement
    for r in train:
        assert r["tflops_executed"] == pytest.approx(r["flops_per_token_executed"] * r["tokens_per_s"] / 1e12)
    pairs = {(v["model"], v["T"]) for v in res["versus"]}
    assert pairs == {(m, T) for m in models - {"gpt-tiny"} for T in q.seq_lens}
    assert all(v["versus"] == "gpt-tiny" for v in res["versus"]) and "against GPT" in out


def test_flops_per_token_counts_attention_and_the_dense_ffn():
    with torch.device("meta"):
        gpt = build_model("gpt-124m")
        spen = build_model("spen-130m")
        attn = build_model("spen-130m", mixer="attention")
    f = flops_per_token(gpt, 1024)
    assert f["flops_per_token"] == 6 * f["matmul_params"] + 12 * 12 * 768 * 1024  # PaLM / nanoGPT
    assert f["matmul_params"] == gpt.num_params() - gpt.pos_emb.weight.numel() - sum(
        p.numel() for n, p in gpt.named_parameters() if p.dim() == 1)
    s = flops_per_token(spen, 1024)
    assert s["flops_per_token"] == 6 * s["matmul_params"]  # the EMA scan is elementwise: not counted
    cfg = spen.config
    assert s["flops_per_token"] - s["flops_per_token_active"] == 6 * (cfg.d_ff - cfg.k_active) * 768 * 12
    a1, a2 = flops_per_token(attn, 1024), flops_per_token(attn, 2048)
    assert a2["flops_per_token"] - a1["flops_per_token"] == 6 * cfg.n_scales * 1024 * (cfg.key_dim + 768) * 12
    # executed: causal attention runs about half its T^2 term; the dense W2 runs in full
    assert f["flops_per_token_executed"] == 6 * f["matmul_params"] + 6 * 12 * 768 * 1024
    assert s["flops_per_token_executed"] == s["flops_per_token"] > s["flops_per_token_active"]
    assert (a2["flops_per_token_executed"] - a1["flops_per_token_executed"]) * 2 == (
        a2["flops_per_token"] - a1["flops_per_token"])
    # a step of 16,384 tokens folds SPEN's predictor into its bottleneck (tests/models/test_spen.py holds
    # the block's FLOPs to this count); a one-token call does not, nor does the attention mixer
    folded, step = flops_per_token(spen, 1024, 16384), flops_per_token(spen, 1024, 1)
    saved = 6 * 3 * 768 * 768 * 12 - 6 * 576 * 3 * 768 * 768 * 12 // 16384
    assert step == s and folded["flops_per_token"] == s["flops_per_token"]
    assert s["flops_per_token_executed"] - folded["flops_per_token_executed"] == saved
    assert s["flops_per_token_active"] - folded["flops_per_token_active"] == saved
    assert flops_per_token(attn, 1024, 16384) == a1


def _measured(model, T, rate, compiled=True):
    """A training row as bench_train writes it, with today's FLOP counts."""
    with torch.device("meta"):
        f = flops_per_token(build_model(config_of(model)), T)
    return {**_train(model, T, compiled, rate), **f}


def test_versus_pairs_each_model_with_gpt_at_its_T_and_mode():
    rows = [_measured("gpt-124m", 8192, 300.0), _measured("spen-130m/ema", 8192, 450.0),
            _measured("spen-130m/ema", 1024, 470.0), _measured("gpt-124m", 8192, 200.0, compiled=False),
            _train("spen/ema", 8192, True, 999.0)]  # no config by that name: left out
    (v,) = versus(rows)
    g, m = rows[0], rows[1]
    assert (v["model"], v["versus"], v["T"], v["compiled"]) == ("spen-130m/ema", "gpt-124m", 8192, True)
    assert v["speed_ratio"] == pytest.approx(1.5)
    assert v["flop_ratio"] == pytest.approx(g["flops_per_token_executed"] / m["flops_per_token_executed"])
    assert v["efficiency_ratio"] * v["flop_ratio"] == pytest.approx(v["speed_ratio"])
    assert v["active_flop_ratio"] > v["flop_ratio"] > 1  # W2's zeros skipped: fewer FLOPs still
    assert v["tflops_executed"] == pytest.approx(m["flops_per_token_executed"] * 450.0 / 1e12)
    assert v["versus_tflops_executed"] == pytest.approx(g["flops_per_token_executed"] * 300.0 / 1e12)


def test_an_older_row_gets_its_executed_flops_only_where_its_count_still_holds():
    fresh = _measured("spen-130m/attention", 4096, 100.0)
    older = {k: v for k, v in fresh.items() if k != "flops_per_token_executed"}
    assert with_executed(older)["flops_per_token_executed"] == fresh["flops_per_token_executed"]
    assert with_executed(older)["tflops_executed"] == pytest.approx(fresh["flops_per_token_executed"] * 1e-10)
    moved = {**older, "flops_per_token": older["flops_per_token"] + 1}  # the config changed since
    assert "flops_per_token_executed" not in with_executed(moved)
    assert "flops_per_token_executed" not in with_executed(_train("spen/ema", 1024, True))
    assert config_of("spen-130m/nope") is None and config_of("gpt-124m/ema") is None
    assert config_of("spen-130m/gla").mixer == "gla"


def test_peak_flops_is_none_on_cpu_unless_given():
    assert peak_flops(torch.device("cpu")) == (None, "none on CPU")
    assert peak_flops(torch.device("cpu"), 100.0) == (1e14, "--peak-tflops")


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="unknown mixer"):
        BenchConfig(mixers=("nope",))
    with pytest.raises(ValueError, match="compile must be one of"):
        BenchConfig(compile="sometimes")
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        BenchConfig(compile_mode="max-speed")
    with pytest.raises(ValueError, match="--compile off leaves none"):
        BenchConfig(compile="off", compile_mode="reduce-overhead")
    with pytest.raises(ValueError, match="unknown model config"):
        BenchConfig(configs=("gpt-9000",))


def test_tag_names_the_files_and_a_bad_tag_is_refused(tmp_path, capsys):
    args = ["bench", "lm", "--quick", "--device", "cpu", "--no-generate", "--seq-lens", "16", "--out", str(tmp_path)]
    assert main([*args, "--tag", "long_T"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_lm_cpu_long_T.json", "bench_lm_cpu_long_T.png"]
    assert {r["part"] for r in json.loads((tmp_path / "bench_lm_cpu_long_T.json").read_text())["rows"]} == {"train"}
    capsys.readouterr()
    assert main([*args, "--tag", "a/b"]) != 0
    assert "--tag 'a/b': use letters, digits" in capsys.readouterr().err


def test_resume_keeps_the_rows_measured_and_measures_the_rest(tmp_path, capsys):
    args = ["bench", "lm", "--quick", "--device", "cpu", "--no-generate", "--seq-lens", "16,32", "--mixers", "ema",
            "--out", str(tmp_path)]
    path = tmp_path / "bench_lm_cpu.json"
    assert main(args) == 0
    first = json.loads(path.read_text())
    assert len(first["rows"]) == 4
    # as if stopped after the first row, which a later run also marked as an error
    cut = {**first, "git_sha": "c0ffee", "rows": first["rows"][:2]}
    cut["rows"][1] = {**cut["rows"][1], "error": "RuntimeError: out of memory"}
    # and written before the `trainer` setting existed: a missing setting counts as its default
    cut["bench_config"] = {k: v for k, v in first["bench_config"].items() if k != "trainer"}
    path.write_text(json.dumps(cut))
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    res = json.loads(path.read_text())
    assert "1 kept from the earlier run, 3 to measure" in out and out.count("kept (c0ffee") == 1
    assert [(r["model"], r["T"]) for r in res["rows"]] == [(r["model"], r["T"]) for r in first["rows"]]
    assert res["rows"][0] == {**first["rows"][0], "source": {"file": path.name, "git_sha": "c0ffee",
                                                              "time_utc": first["time_utc"], "torch": torch.__version__}}
    assert "source" not in res["rows"][1] and "error" not in res["rows"][1]  # the error row was measured again
    assert res["resumed_from"] == ["c0ffee"] and len(res["versus"]) == 2
    # a run under other settings is refused, naming them, and the file is left as it was
    before = path.read_text()
    assert main([*args[:-6], "--seq-lens", "16", "--mixers", "ema", "--out", str(tmp_path), "--resume"]) != 0
    err = capsys.readouterr().err
    assert "measured with other settings (seq_lens: seq_lens [16, 32], now [16])" in err
    assert path.read_text() == before
    path.write_text("{not json")
    assert main([*args, "--resume"]) != 0 and "not a readable JSON file" in capsys.readouterr().err
    path.unlink()
    assert main([*args, "--resume"]) == 0  # nothing yet: every row is measured
    assert "every row is measured" in capsys.readouterr().out and len(json.loads(path.read_text())["rows"]) == 4


def _part(path, card, rows, sha):
    rec = {"benchmark": "lm", "card": card, "device_type": "cuda", "peak_flops": 1e15, "peak_flops_source": "x",
           "git_sha": sha, "time_utc": "t", "torch": "2.x", "argv": ["bench", "lm"], "bench_config": {}, "rows": rows}
    path.write_text(json.dumps(rec))
    return path


def _train(model, T, compiled, rate=1000.0):
    return {"part": "train", "model": model, "T": T, "B": 16384 // T, "compiled": compiled, "tokens_per_s": rate}


def test_merge_joins_parts_keeps_sources_and_names_missing_rows(tmp_path, capsys):
    a = _part(tmp_path / "a.json", "H", [_train("spen/ema", 1024, False), _train("gpt", 1024, False),
                                         _train("spen/ema", 4096, False, 900.0)], "aaa")
    b = _part(tmp_path / "b.json", "H", [_train("spen/ema", 1024, True), _train("gpt", 4096, True),
                                         {"part": "generate", "model": "gpt", "B": 1, "prompt": 64,
                                          "compiled": True, "tokens_per_s": 5.0, "ms_per_step": 200.0,
                                          "prefill_s": 0.1}], "bbb")
    out = tmp_path / "out"
    assert main(["bench", "lm", "--merge", str(a), str(b), "--tag", "grid", "--out", str(out)]) == 0
    res = json.loads((out / "bench_lm_h_grid.json").read_text())
    assert (out / "bench_lm_h_grid.png").stat().st_size > 0
    assert len(res["rows"]) == 6 and [s["git_sha"] for s in res["merged_from"]] == ["aaa", "bbb"]
    by = {(r["model"], r.get("T"), r["compiled"]): r for r in res["rows"]}
    assert by[("spen/ema", 4096, False)]["tokens_per_s"] == 900.0
    assert by[("spen/ema", 4096, False)]["source"]["file"] == "a.json"
    assert by[("gpt", 4096, True)]["source"]["git_sha"] == "bbb"
    missing = {(m["model"], m["T"], m["compiled"]) for m in res["missing_train"]}
    grid = {(m, T, c) for m in ("spen/ema", "gpt") for T in BenchConfig.seq_lens for c in (False, True)}
    assert missing == grid - {(m, T, c) for m, T, c in by if T}  # the default grid's training rows not measured
    assert ("gpt", 1024, True) in missing and ("spen/ema", 1024, True) not in missing
    assert "missing: gpt T=1024 compiled" in capsys.readouterr().out
    assert res["versus"] == []  # labels no config names: nothing to pair


def test_merge_pairs_each_trainer_row_with_its_step_row_across_parts(tmp_path, capsys):
    def trainer(T, rate):
        return {**_train("spen/sel", T, True, rate), "part": "trainer"}

    a = _part(tmp_path / "a.json", "H", [_train("spen/sel", 1024, True, 400.0), trainer(1024, 398.0)], "aaa")
    b = _part(tmp_path / "b.json", "H", [_train("spen/sel", 8192, True, 384.0), trainer(8192, 192.0)], "bbb")
    out = tmp_path / "out"
    assert main(["bench", "lm", "--merge", str(a), str(b), "--tag", "t", "--out", str(out)]) == 0
    res = json.loads((out / "bench_lm_h_t.json").read_text())
    assert {t["T"]: t["ratio"] for t in res["trainer_vs_step"]} == {1024: pytest.approx(0.995), 8192: 0.5}
    printed = capsys.readouterr().out
    assert "192 against the step's 384 tok/s: 0.50x" in printed and "398 against the step's 400" in printed


def test_merge_pairs_older_rows_against_gpt(tmp_path, capsys):
    old = [{k: v for k, v in r.items() if k != "flops_per_token_executed"}
           for r in (_measured("spen-130m/ema", 8192, 460.0), _measured("gpt-124m", 8192, 300.0))]
    a = _part(tmp_path / "a.json", "H", old[:1], "aaa")
    b = _part(tmp_path / "b.json", "H", old[1:], "bbb")
    assert main(["bench", "lm", "--merge", str(a), str(b), "--tag", "vs", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "bench_lm_h_vs.json").read_text())
    (v,) = res["versus"]
    assert v["speed_ratio"] == pytest.approx(460 / 300) and v["flop_ratio"] > 1
    assert all("tflops_executed" in r for r in res["rows"])
    assert "spen-130m/ema" in capsys.readouterr().out.split("against GPT")[1]


def test_merge_refuses_a_row_in_two_files_another_card_and_a_foreign_file(tmp_path):
    from emaprobe.experiments.bench_lm import merge

    a = _part(tmp_path / "a.json", "H", [_train("gpt", 1024, True)], "aaa")
    dup = _part(tmp_path / "dup.json", "H", [_train("gpt", 1024, True, 5.0)], "bbb")
    with pytest.raises(ValueError, match="measured in both a.json and dup.json"):
        merge([a, dup], out_dir=tmp_path / "o")
    other = _part(tmp_path / "other.json", "A100", [_train("gpt", 4096, True)], "ccc")
    with pytest.raises(ValueError, match="card 'A100'.*differs"):
        merge([a, other], out_dir=tmp_path / "o")
    scan = tmp_path / "scan.json"
    scan.write_text(json.dumps({"benchmark": "scan", "rows": []}))
    with pytest.raises(ValueError, match="not a bench lm result"):
        merge([a, scan], out_dir=tmp_path / "o")
    with pytest.raises(ValueError, match="two or more"):
        merge([a], out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing written on a refusal


def test_merge_with_measuring_options_is_refused(tmp_path, capsys):
    a = _part(tmp_path / "a.json", "H", [_train("gpt", 1024, True)], "aaa")
    b = _part(tmp_path / "b.json", "H", [_train("gpt", 4096, True)], "bbb")
    assert main(["bench", "lm", "--merge", str(a), str(b), "--seq-lens", "1024", "--out", str(tmp_path / "o")]) != 0
    assert "--merge measures nothing" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["bench", "lm", "--merge", str(a), str(b), "--resume", "--out", str(tmp_path / "o")]) != 0
    assert "drop ['resume']" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--no-train", "--no-generate"], "--no-train and --no-generate together leave nothing to measure"),
    (["--seq-lens", "32,64", "--tokens-per-step", "10"],
     "--tokens-per-step 10 is less than T = 64 of --seq-lens, so B = 10 // 64 = 0"),
])
def test_a_run_that_would_measure_nothing_is_refused(args, message, tmp_path, capsys):
    assert main(["bench", "lm", "--quick", "--device", "cpu", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"emaprobe bench: error: {message}") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_quick_help_gives_its_cpu_run_time(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "lm", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(seconds)" not in out and out.count("(half a minute to two minutes on 2 CPU cores)") == 2  # --quick and its example


def test_trainer_rows_time_train_lm_at_each_training_shape(tmp_path, capsys, recwarn):
    args = ["bench", "lm", "--quick", "--device", "cpu", "--config", "spen-tiny", "--mixers", "ema", "--seq-lens",
            "32,64", "--no-generate", "--trainer", "--steps", "3", "--repeats", "2", "--out", str(tmp_path)]
    assert main(args) == 0
    # the trainer's lr warms up inside the untimed first window: train_lm has no warm-up to warn the user about
    assert not [w for w in recwarn if "warmup_steps" in str(w.message)]
    res = json.loads((tmp_path / "bench_lm_cpu.json").read_text())
    train = {(r["model"], r["T"]): r for r in res["rows"] if r["part"] == "train"}
    loop = {(r["model"], r["T"]): r for r in res["rows"] if r["part"] == "trainer"}
    assert set(loop) == set(train) == {("spen-tiny/ema", 32), ("spen-tiny/ema", 64)}
    for key, r in loop.items():
        # train_lm ran steps x (repeats + 1) steps, logged every `steps`; the first window is not in the figure
        assert len(r["windows_tokens_per_s"]) == 3 and r["B"] == train[key]["B"]
        assert r["tokens_per_s"] == pytest.approx(sorted(r["windows_tokens_per_s"][1:])[0] / 2
                                                  + sorted(r["windows_tokens_per_s"][1:])[1] / 2)
    ratios = {(t["model"], t["T"]): t["ratio"] for t in res["trainer_vs_step"]}
    assert ratios == {k: pytest.approx(loop[k]["tokens_per_s"] / train[k]["tokens_per_s"]) for k in loop}
    assert "through train_lm" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--trainer .* needs the training rows"):
        quick_config(trainer=True, train=False)


@pytest.mark.parametrize("name, group", [
    ("nvjet_sm90_tst_192x192_64x3_2x1_v_bz_coopB_NNN", "matmul"),  # cuBLAS's Hopper GEMMs, as an H100 names them
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16>", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64", "attention"),
    ("void cudnn::fusion::compute_dot_do_o_specialized<true, 64>(void const*, void const*)", "attention"),
    ("_relu_pair_kernel", "emaprobe"),
    ("_ema_bwd_kernel", "emaprobe"),
    ("triton_per_fused__to_copy_add_div_expand_mul_pow_sum_view_9", "inductor"),
    ("void at::native::multi_tensor_apply_kernel<FusedOptimizerTensorListMetadata<4>, FusedAdamMathFunctor<float>>",
     "optimizer"),
    ("void at::native::multi_tensor_apply_kernel<TensorListMetadata<1>, LpNormFunctor<float>>", "foreach"),
    ("aten::mm", "matmul"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("Memset (Device)", "other"),
    ("aten::copy_", "other"),
])
def test_kernel_group_names_what_a_kernel_is(name, group):
    assert kernel_group(name) == group


def test_profile_sums_each_training_rows_kernels_by_kind(tmp_path, capsys):
    args = ["bench", "lm", "--quick", "--device", "cpu", "--config", "spen-tiny", "--config", "gpt-tiny",
            "--mixers", "ema", "--seq-lens", "32", "--no-generate", "--out", str(tmp_path)]
    assert main([*args, "--profile"]) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "bench_lm_cpu.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"spen-tiny/ema", "gpt-tiny"}
    for r in rows:
        p = r["profile"]
        assert p["steps"] == PROFILE_STEPS and p["what"].startswith("CPU ops") and p["idle_ms"] is None
        assert p["busy_ms"] > 0 and sum(p["groups"].values()) == pytest.approx(p["busy_ms"])
        assert list(p["groups"].values()) == sorted(p["groups"].values(), reverse=True)
        assert p["groups"]["matmul"] > 0  # both models multiply (aten::mm and friends on CPU)
        ms = [k["ms"] for k in p["top"]]
        assert 0 < len(ms) <= PROFILE_TOP and ms == sorted(ms, reverse=True)
        for k in p["top"]:
            assert k["group"] == kernel_group(k["name"]) and k["launches"] > 0
    assert out.count("profile (CPU ops") == 2 and out.count("largest:") == 2
    # without --profile a row carries none, and the plot has no panel of bars (a panel is 6.5 inches wide)
    assert main([*args, "--tag", "plain"]) == 0
    assert all("profile" not in r for r in json.loads((tmp_path / "bench_lm_cpu_plain.json").read_text())["rows"])
    wide, plain = (matplotlib.image.imread(tmp_path / f"bench_lm_cpu{t}.png").shape[1] for t in ("", "_plain"))
    assert wide > 1.2 * plain


def test_compile_mode_reaches_the_compiled_rows_and_their_printout(tmp_path, capsys):
    """--compile-mode is the trainer's compile_mode for every compiled training row (on CPU Inductor compiles
    reduce-overhead as default; the CUDA graphs are checked in tests/train/test_compile_mode_gpu.py)."""
    assert main(["bench", "lm", "--quick", "--device", "cpu", "--no-generate", "--config", "spen-tiny", "--mixers",
                 "ema", "--seq-lens", "16", "--compile", "both", "--compile-mode", "reduce-overhead",
                 "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "bench_lm_cpu.json").read_text())
    assert res["bench_config"]["compile_mode"] == "reduce-overhead"
    by = {r["compiled"]: r for r in res["rows"]}
    assert by[True]["compile_mode"] == "reduce-overhead" and by[True]["tokens_per_s"] > 0
    assert "compile_mode" not in by[False]
    assert "compiled (reduce-overhead)" in capsys.readouterr().out
