"""Bad command-line values: one line naming the argument, exit 2, no traceback, nothing run and nothing written."""

from __future__ import annotations

import pytest

from emaprobe.cli import main


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_run_with_an_empty_name_is_an_unknown_experiment(capsys):
    assert main(["run", ""]) == 2
    err = _error(capsys)
    assert "unknown experiment ''" in err and "probe_mqar" in err


@pytest.mark.parametrize("setting, match", [
    ("threads=-1", "threads must be >= 0"),
    ("variants=gpt,gpt", "variants must be distinct"),
])
def test_run_lm_ptb_refuses(setting, match, tmp_path, capsys, monkeypatch):
    from emaprobe.experiments import lm_ptb

    monkeypatch.setattr(lm_ptb, "run_variant", lambda *a, **k: pytest.fail("a variant trained"))
    assert main(["run", "lm_ptb", "--smoke", "--set", setting, "--out", str(tmp_path / "o")]) == 2
    assert match in _error(capsys)
    assert not (tmp_path / "o").exists()


def test_run_probe_map_outside_the_repository_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # results/... are relative: none is found here
    assert main(["run", "probe_map", "--out", "pm"]) == 2
    err = _error(capsys)
    assert "found none of its inputs" in err and "results/roles/roles.json not found" in err and "--set" in err
    assert not (tmp_path / "pm").exists()


def test_bench_scan_refuses_a_shape_that_cannot_fit(tmp_path, capsys, monkeypatch):
    from emaprobe.experiments import bench_scan

    monkeypatch.setattr(bench_scan, "bench_cpu_shape", lambda *a, **k: pytest.fail("a shape was timed"))
    assert main(["bench", "scan", "--shape", "99999x99999x99999", "--out", str(tmp_path / "o")]) == 2
    assert "--shape 99999x99999x99999 cannot fit" in _error(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("inside", [False, True])
def test_bench_scan_refuses_a_file_as_out_before_running(inside, tmp_path, capsys, monkeypatch):
    from emaprobe.experiments import bench_scan

    monkeypatch.setattr(bench_scan, "bench_cpu_shape", lambda *a, **k: pytest.fail("ran before --out was checked"))
    stray = tmp_path / "stray.txt"
    stray.write_text("mine\n")
    out = stray / "sub" if inside else stray
    assert main(["bench", "scan", "--shape", "1x8x8", "--repeats", "1", "--out", str(out)]) == 2
    assert f"{stray} is a file, not a folder" in _error(capsys)
    assert stray.read_text() == "mine\n"


@pytest.mark.parametrize("mixers", [",", "", " , "])
def test_bench_lm_refuses_an_empty_mixer_list(mixers, tmp_path, capsys, monkeypatch):
    from emaprobe.experiments import bench_lm

    monkeypatch.setattr(bench_lm, "run", lambda *a, **k: pytest.fail("measured with no mixer named"))
    assert main(["bench", "lm", "--quick", "--device", "cpu", "--mixers", mixers, "--out", str(tmp_path)]) == 2
    assert "--mixers" in _error(capsys)


@pytest.mark.parametrize("peak", ["-1", "nan", "0"])
def test_bench_lm_refuses_a_bad_peak(peak, tmp_path, capsys, monkeypatch):
    from emaprobe.experiments import bench_lm

    monkeypatch.setattr(bench_lm, "model_list", lambda bc: pytest.fail("measured before --peak-tflops was checked"))
    assert main(["bench", "lm", "--quick", "--device", "cpu", "--peak-tflops", peak, "--out", str(tmp_path)]) == 2
    assert "--peak-tflops must be a finite number > 0" in _error(capsys)


def test_data_prepare_caps_the_vocab_size(tmp_path, capsys, monkeypatch):
    """The bpe trainer aborts the whole process (exit 134) on a vocabulary it cannot allocate."""
    import emaprobe.data

    monkeypatch.setattr(emaprobe.data, "resolve_tokenizer", lambda *a, **k: pytest.fail("a tokenizer was trained"))
    assert main(["data", "prepare", "--data", "ptb:valid", "--tokenizer", "bpe", "--vocab-size", "99999999999",
                 "--out", str(tmp_path / "d"), "--workers", "1"]) == 2
    assert "--vocab-size must be <= 16,777,216" in _error(capsys)


@pytest.mark.parametrize("seed", ["99999999999999999999999", str(2**64), "-1"])
def test_lm_generate_refuses_a_seed_torch_cannot_take(seed, tmp_path, capsys):
    assert main(["lm", "generate", "--ckpt", str(tmp_path / "none"), "--prompt", "the", "--tokens", "2",
                 "--seed", seed]) == 2
    assert "--seed must lie in [0, 2**64 - 1]" in _error(capsys)
