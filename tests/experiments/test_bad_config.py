"""Bad config values are refused when the config is made, naming the field: before any work, before any file."""

from __future__ import annotations

import math

import pytest

from emaprobe.experiments.protocol import get_experiment, run_experiment
from emaprobe.tasks.role_data import RoleDataConfig, make_splits
from emaprobe.train.tagger import LinearProbe

NAN = float("nan")


@pytest.mark.parametrize("fields, match", [
    ({"threads": -1}, r"threads must be >= 0 .*got -1"),
    ({"variants": ("gpt", "gpt")}, r"variants must be distinct .*\('gpt', 'gpt'\)"),
    ({"variants": ()}, r"variants must be distinct variant names, at least one"),
])
def test_lm_ptb_config_refuses(fields, match):
    with pytest.raises(ValueError, match=match):
        get_experiment("lm_ptb").Config(**fields)


def _mqar_smoke(**fields):
    mqar = get_experiment("probe_mqar")
    return mqar.Config(**{**vars(mqar.smoke()), **fields})


@pytest.mark.parametrize("fields, match", [
    ({"short_conv": -1}, r"short_conv must be >= 0.*got -1"),
    ({"vocab": 4}, r"vocab must be even and >= 8.*got 4"),
    ({"vocab": 15}, r"vocab must be even and >= 8.*got 15"),
    ({"n_test": 0}, r"n_test must be >= 1, got 0"),
    ({"batch": 0}, r"batch must be >= 1, got 0"),
    ({"key_dim": 0}, r"key_dim must be >= 1, got 0"),
    ({"mixers": ()}, r"mixers must be distinct mixer names, at least one; got \(\)"),
    ({"lrs": (NAN,)}, r"lrs must hold finite learning rates > 0.*nan"),
    ({"lrs": (-1e-3,)}, r"lrs must hold finite learning rates > 0.*-0.001"),
    ({"lrs": ()}, r"lrs must hold finite learning rates > 0, at least one"),
    ({"claim_cell": (24, 2)}, r"claim_cell must be \(T, N, D\), three sizes, got \(24, 2\)"),
    # the claim cell always runs: its pairs must fit the vocabulary and the sequence
    ({"vocab": 8, "pairs": (2, 4), "claim_cell": (24, 4, 16)}, r"n_pairs=4 .* raise vocab"),
])
def test_probe_mqar_config_refuses(fields, match):
    with pytest.raises(ValueError, match=match):
        _mqar_smoke(**fields)


def _depth_smoke(**fields):
    depth = get_experiment("probe_depth")
    return depth.Config(**{**vars(depth.smoke()), **fields})


@pytest.mark.parametrize("fields, match", [
    ({"seeds": 0}, r"seeds must be >= 1, got 0"),
    ({"d_model": 0}, r"d_model must be >= 1, got 0"),
    ({"vocab": 0}, r"vocab must be >= 2 .*got 0"),
    ({"vocab": 1}, r"vocab must be >= 2 .*got 1"),
    ({"n_train": 0}, r"n_train must be >= 1, got 0"),
    ({"mechanisms": ()}, r"mechanisms must be distinct mechanism names, at least one; got \(\)"),
    ({"gate_steps": -1}, r"gate_steps must be >= 0, got -1"),
    ({"gate_lr": NAN}, r"gate_lr must be a finite number > 0, got nan"),
    ({"gate_lr": -1.0}, r"gate_lr must be a finite number > 0, got -1.0"),
    ({"probe": "svm"}, r"probe must be one of \['lda', 'lbfgs', 'best'\], got 'svm'"),
])
def test_probe_depth_config_refuses(fields, match):
    with pytest.raises(ValueError, match=match):
        _depth_smoke(**fields)


@pytest.mark.parametrize("name, overrides, match", [
    ("probe_mqar", {"vocab": "4"}, "vocab"),
    ("probe_depth", {"seeds": "0"}, "seeds must be >= 1"),
])
def test_a_refused_config_leaves_no_result(tmp_path, name, overrides, match):
    """A stub result of the refused config would block the corrected command as "other settings"."""
    out = tmp_path / name
    with pytest.raises(ValueError, match=match):
        run_experiment(name, budget="smoke", overrides=overrides, out=out)
    assert not out.exists()


def test_probe_map_that_finds_no_input_fails_and_writes_nothing(tmp_path):
    """Run outside the repository root, every relative source path misses: an error, not empty claims."""
    out = tmp_path / "map"
    nowhere = {"roles": str(tmp_path / "a.json"), "lag": str(tmp_path / "b.json"), "mqar": f'["{tmp_path / "c.json"}"]'}
    with pytest.raises(FileNotFoundError, match=r"found none of its inputs .*a\.json not found.*--set roles=PATH"):
        run_experiment("probe_map", overrides=nowhere, out=out)
    assert not out.exists()


@pytest.mark.parametrize("l2", [NAN, -1.0, math.inf])
def test_linear_probe_refuses_nan_and_negative_l2(l2):
    with pytest.raises(ValueError, match=r"LinearProbe.l2 must be a finite number >= 0"):
        LinearProbe(l2=l2)


@pytest.mark.parametrize("field", ["n_train", "n_val", "n_test"])
def test_role_data_sizes_must_be_positive(field):
    """An empty split fails deep in torch.cat otherwise (``--set data.n_train=0``)."""
    with pytest.raises(ValueError, match=rf"data\.{field} must be >= 1, got 0"):
        RoleDataConfig(**{field: 0})
    with pytest.raises(ValueError, match=rf"{field} must be >= 1, got 0"):
        make_splits(**{"n_train": 10, "n_val": 10, "n_test": 10, field: 0})


def test_roles_refuses_an_empty_split_before_running(tmp_path):
    with pytest.raises(ValueError, match=r"data\.n_train must be >= 1, got 0"):
        run_experiment("roles", budget="smoke", overrides={"data.n_train": "0"}, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_roles_tune_needs_two_validation_sentences():
    """A-val is split in halves, each naming the clusters the other scores."""
    tune = get_experiment("roles_tune")
    with pytest.raises(ValueError, match=r"data\.n_val must be >= 2 .*got 1"):
        tune.Config(data=RoleDataConfig(n_train=100, n_val=1, n_test=10))
    with pytest.raises(ValueError, match=r"data\.n_val must be >= 1, got 0"):
        tune.Config(data=RoleDataConfig(n_train=100, n_val=0, n_test=10))


def test_bench_lm_config_refuses_no_mixers():
    from emaprobe.experiments.bench_lm import BenchConfig

    with pytest.raises(ValueError, match=r"mixers must name at least one mixer"):
        BenchConfig(mixers=())


@pytest.mark.parametrize("peak", [-1.0, 0.0, NAN, math.inf])
def test_bench_lm_refuses_a_bad_peak_before_measuring(peak, monkeypatch, tmp_path):
    from emaprobe.experiments import bench_lm

    monkeypatch.setattr(bench_lm, "model_list", lambda bc: pytest.fail("measured before --peak-tflops was checked"))
    with pytest.raises(ValueError, match=r"--peak-tflops must be a finite number > 0"):
        bench_lm.run(bench_lm.quick_config(), device="cpu", out_dir=tmp_path, peak_tflops=peak)
    assert not any(tmp_path.iterdir())


def test_bench_scan_shape_that_cannot_fit():
    from emaprobe.experiments.bench_scan import check_shapes_fit

    with pytest.raises(ValueError, match=r"--shape 99999x99999x99999 cannot fit: .* GiB"):
        check_shapes_fit([(99999, 99999, 99999)], "cpu")
    check_shapes_fit([(8, 8192, 256)], "cpu")  # the target shape fits anywhere


def test_bench_scan_out_of_memory_names_the_shape():
    from emaprobe.experiments.bench_scan import out_of_memory_named

    with pytest.raises(ValueError, match=r"--shape 2x3x4 ran out of memory \(DefaultCPUAllocator: can't allocate"):
        with out_of_memory_named((2, 3, 4)):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes.\nmore")
    with pytest.raises(RuntimeError, match="unrelated"):  # other errors pass through untouched
        with out_of_memory_named((2, 3, 4)):
            raise RuntimeError("unrelated")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_roles_config_refuses_a_bad_probe_l2(value):
    # NaN passed the probe's own `< 0` check until the first probe was fitted, seconds into the run
    from emaprobe.experiments import roles

    with pytest.raises(ValueError, match="probe_l2 must be a finite number >= 0"):
        roles.Config(probe_l2=value)
