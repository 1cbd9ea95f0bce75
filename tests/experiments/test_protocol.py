"""The experiment protocol: claim rows that cannot lie about their form, verdict rules, the registry."""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

from emaprobe.cli.run import parse_set
from emaprobe.experiments import protocol
from emaprobe.experiments.protocol import (
    Claim,
    no_difference_note,
    read_claims,
    verdict_from_interval,
    verdict_no_difference,
    write_claims,
)

ROW = dict(claim="c", metric="m", paper=0.96, ours=0.9, std=0.01, seeds=5, scale="s", verdict="refuted", command="x")


@pytest.mark.parametrize("field, value, words", [
    ("verdict", "maybe", "verdict must be one of"),
    ("ours", math.nan, "ours must be a finite number"),
    ("paper", "high", "paper must be a finite number"),
    ("seeds", 0, "seeds must be an integer >= 1"),
    ("command", "", "command must not be empty"),
    ("seeds", 1, "std must be None for one seed"),
])
def test_a_malformed_claim_is_a_named_error(field, value, words):
    with pytest.raises(ValueError, match=words):
        Claim(**{**ROW, field: value})


def test_claims_round_trip_and_duplicate_ids_are_refused(tmp_path):
    rows = [Claim(**ROW), Claim(**{**ROW, "claim": "d", "paper": None, "std": None})]
    write_claims(tmp_path, rows)
    assert read_claims(tmp_path) == rows
    with pytest.raises(ValueError, match=r"duplicate claim ids \['c'\]"):
        write_claims(tmp_path, [Claim(**ROW), Claim(**ROW)])
    (tmp_path / "claims.json").write_text(json.dumps([{**ROW, "colour": "red"}]))
    with pytest.raises(ValueError, match="row 0 has unknown fields"):
        read_claims(tmp_path)


@pytest.mark.parametrize("lo, hi, above, verdict", [
    (0.6, 0.9, True, "confirmed"), (0.1, 0.4, True, "refuted"), (0.4, 0.6, True, "inconclusive"),
    (0.1, 0.4, False, "confirmed"), (0.6, 0.9, False, "refuted"),
])
def test_verdict_from_interval(lo, hi, above, verdict):
    assert verdict_from_interval(lo, hi, threshold=0.5, above_confirms=above) == verdict


@pytest.mark.parametrize("mean, lo, hi, verdict", [
    (0.004, -0.015, 0.019, "confirmed"),  # within +-0.02
    (0.010, 0.005, 0.015, "confirmed"),  # excludes 0, but by less than the tolerance
    (0.037, 0.030, 0.044, "refuted"),  # excludes 0 by more
    (-0.050, -0.060, -0.040, "refuted"),
    (0.004, -0.030, 0.038, "inconclusive"),  # too wide to say
])
def test_verdict_no_difference(mean, lo, hi, verdict):
    assert verdict_no_difference(mean, lo, hi, tol=0.02) == verdict


@pytest.mark.parametrize("verdict, lo, hi, caveat", [
    ("confirmed", -0.015, 0.019, None),  # within the tolerance: the rule alone
    ("confirmed", -0.0227, -0.0091, "reaches -0.0227, past +-0.02"),  # by the mean alone, the low end past it
    ("confirmed", 0.005, 0.031, "reaches +0.0310, past +-0.02"),  # the high end past it
    ("inconclusive", -0.0227, -0.0091, None),  # a verdict the caller kept (one seed): no caveat
    ("inconclusive", -0.0122, 0.0302, None),  # spans 0 and passes +0.02: the mean (+0.009) is not enough
    ("refuted", 0.030, 0.044, None),
])
def test_no_difference_note_names_a_verdict_resting_on_the_mean_alone(verdict, lo, hi, caveat):
    note = no_difference_note(verdict, lo, hi, tol=0.02)
    assert note.startswith("Verdict rule: confirmed when the interval lies within +-0.02 nats")
    # a small mean alone does not confirm: the rule's words say the interval must exclude 0 too (lm_ptb's
    # +0.009 over [-0.012, +0.030] is inconclusive)
    assert "or excludes 0 with a mean under 0.02" in note and "the difference is under" not in note
    if caveat is None:
        assert "mean alone" not in note
    else:
        assert note.endswith(f"Confirmed here by the mean alone: the interval {caveat}.")


def test_verdicts_refuse_an_inverted_interval():
    with pytest.raises(ValueError, match="interval low 0.2 > high 0.1"):
        verdict_no_difference(0.15, 0.2, 0.1, tol=0.02)


def test_unknown_experiment_and_budget_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown experiment 'nope'; choose one of \[.*'lm_scale'"):
        protocol.get_experiment("nope")
    exp = protocol.get_experiment("lm_ptb")
    with pytest.raises(ValueError, match=r"has no budget 'huge'; choose one of \['default', 'gpu', 'smoke'\]"):
        protocol.config_for(exp, "huge")
    assert protocol.config_for(exp, "smoke", {"seeds": "3"}).seeds == (3,)
    assert protocol.config_for(exp, "smoke", {"seeds": "0,2"}).seeds == (0, 2)


def test_set_items_parse_or_fail_clearly():
    assert parse_set(["a.b=1", "c = x "]) == {"a.b": "1", "c": "x"}
    with pytest.raises(ValueError, match="--set takes FIELD=VALUE"):
        parse_set(["a.b"])


def test_a_report_of_foreign_json_is_a_named_error(tmp_path):
    # valid JSON, but not what probe_lag wrote: the report's missing field becomes a ValueError naming the folder
    (tmp_path / protocol.get_experiment("probe_lag").RESULT).write_text('{"per_seed": []}')
    with pytest.raises(ValueError, match=r"the probe_lag JSON there lacks what the report reads \(KeyError: 'config'\)"):
        protocol.run_experiment("probe_lag", out=tmp_path, report_only=True)


# ---------------------------------------------------------------------------- one config a folder


def _fake_experiment(monkeypatch):
    """A registered experiment whose one JSON (``RESULT``) records its config, as the probes' do."""
    import sys
    import types
    from dataclasses import asdict, dataclass

    from emaprobe.utils import atomic_write_json, read_json

    mod = types.ModuleType("fake_experiments.folder")

    @dataclass(frozen=True)
    class Config:
        seeds: int = 5
        scale: float = 1.0
        workers: int = 1

    def run(cfg, out):
        atomic_write_json(out / "result.json", {"config": asdict(cfg), "values": [cfg.scale] * cfg.seeds})

    def report(out):
        r = read_json(out / "result.json")
        (out / "README.md").write_text("# folder\n\nWritten by `emaprobe run folder`.\n", encoding="utf-8")
        write_claims(out, [protocol.Claim(**{**ROW, "command": "emaprobe run folder", "seeds": len(r["values"]),
                                             "std": None if len(r["values"]) == 1
                                             else 0.0, "ours": r["values"][0]})])

    mod.NAME, mod.Config, mod.run, mod.report, mod.RESULT = "folder", Config, run, report, "result.json"
    mod.EXECUTION_FIELDS = ("workers",)
    mod.smoke = lambda: Config(seeds=1, scale=0.5)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(protocol.EXPERIMENTS, "folder", mod.__name__)
    return mod


def test_a_folder_of_another_configs_results_is_refused_unless_overwrite(monkeypatch, tmp_path, capsys):
    from emaprobe.cli import main

    _fake_experiment(monkeypatch)
    out = tmp_path / "folder"
    protocol.run_experiment("folder", out=out)  # the default: 5 seeds
    protocol.run_experiment("folder", out=out, overrides={"workers": "4"})  # how it runs: the same config goes on
    assert json.loads((out / "result.json").read_text())["config"]["seeds"] == 5
    before = (out / "result.json").read_bytes()
    with pytest.raises(ValueError, match=r"result.json holds folder results made with other settings \(scale: 1.0 "
                                         r"there, 0.5 now; seeds: 5 there, 1 now\).*choose another --out, or pass "
                                         r"--overwrite"):
        protocol.run_experiment("folder", budget="smoke", out=out)
    assert main(["run", "folder", "--smoke", "--out", str(out)]) == 2
    assert f"{out / 'result.json'} holds folder results" in capsys.readouterr().err
    assert (out / "result.json").read_bytes() == before, "nothing is overwritten"
    assert main(["run", "folder", "--smoke", "--out", str(out), "--overwrite"]) == 0
    assert "removed" in capsys.readouterr().out
    assert json.loads((out / "result.json").read_text())["config"]["seeds"] == 1
    assert read_claims(out)[0].seeds == 1
    # the default folder, runs/folder, is scratch: each run replaces it, as before
    monkeypatch.chdir(tmp_path)
    protocol.run_experiment("folder")
    protocol.run_experiment("folder", budget="smoke")
    assert json.loads((tmp_path / "runs" / "folder" / "result.json").read_text())["config"]["seeds"] == 1


def test_report_only_refuses_what_it_would_ignore(monkeypatch, tmp_path, capsys):
    from emaprobe.cli import main

    _fake_experiment(monkeypatch)
    protocol.run_experiment("folder", out=tmp_path)
    for extra in (["--set", "seeds=abc"], ["--smoke"], ["--budget", "smoke"], ["--overwrite"]):
        assert main(["run", "folder", "--report-only", *extra, "--out", str(tmp_path)]) == 2, extra
        err = capsys.readouterr().err
        assert "--report-only rebuilds the report from the JSON already in" in err and "would be ignored" in err
    assert main(["run", "folder", "--report-only", "--out", str(tmp_path)]) == 0


def test_config_diff_names_nested_fields_and_reads_tuples_as_lists():
    there = {"seeds": [0, 1], "data": {"n_train": 4000, "n_val": 500}, "threads": 1, "old": 3}
    now = {"seeds": (0, 1), "data": {"n_train": 300, "n_val": 500}, "threads": 2, "new": 4}
    assert protocol.config_diff(there, now, ignore=("threads",)) == {
        "data.n_train": (4000, 300), "new": ("absent", 4), "old": (3, "absent")}
    assert protocol.config_diff(there, now, ignore=("threads",), predates_ok=True) == {"data.n_train": (4000, 300)}
    assert protocol.config_diff(there, now, ignore=("data",), predates_ok=True) == {"threads": (1, 2)}


COMMITTED = Path(__file__).resolve().parents[2] / "results"


@pytest.mark.skipif(not (COMMITTED / "probes" / "probe_mqar_gpu_long" / "mqar.json").is_file(),
                    reason="needs the committed results/ (an installed package has none)")
def test_probe_mqar_refuses_a_committed_folder_of_another_budget_before_writing(tmp_path):
    from emaprobe.experiments import probe_mqar

    out = tmp_path / "probe_mqar_gpu_long"
    shutil.copytree(COMMITTED / "probes" / "probe_mqar_gpu_long", out)
    before = (out / "mqar.json").read_bytes()
    with pytest.raises(ValueError, match=r"mqar.json holds probe_mqar results made with other settings \(.*budget: "
                                         r"'gpu_long' there, 'smoke' now"):
        protocol.run_experiment("probe_mqar", budget="smoke", out=out)
    assert (out / "mqar.json").read_bytes() == before and not (out / "partial").exists()
    # its own resume rule is the same: the committed budget goes on from the committed rows
    assert protocol.stored_conflicts(probe_mqar, probe_mqar.gpu_long(), out) == []


def test_common_command_sets_nested_fields_lists_and_shell_words():
    from emaprobe.experiments.common import command, nearest_budget
    from emaprobe.experiments.roles import smoke as roles_smoke

    cfg = dataclasses.asdict(dataclasses.replace(roles_smoke(), seeds=2, treebank="",
                                                 budgets=(10, 20), eval_grammars=("a b.yaml",)))
    cfg["two_stage"]["n_units"] = 9
    assert nearest_budget("roles", cfg) == "smoke"
    assert command("roles", Path("o"), cfg, budget="smoke") == (
        "emaprobe run roles --smoke --set two_stage.n_units=9 --set budgets=10,20 --set seeds=2 "
        "--set eval_grammars='[\"a b.yaml\"]' --set treebank= --out o")
    assert command("lm_scale", None, {"train": "my text/*.xz"}) == "emaprobe run lm_scale --set 'train=my text/*.xz'"
    assert nearest_budget("roles", dataclasses.asdict(protocol.get_experiment("roles").Config())) == "default"


def test_report_files_another_wrote_are_refused_unless_overwrite(monkeypatch, tmp_path, capsys):
    # a run writes README.md and claims.json: into a folder holding someone else's it replaced them silently
    from emaprobe.cli import main

    _fake_experiment(monkeypatch)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# my project\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"README.md was not written by `emaprobe run folder`.*--overwrite"):
        protocol.run_experiment("folder", out=mine)
    assert (mine / "README.md").read_text(encoding="utf-8") == "# my project\n" and not (mine / "result.json").exists()
    other = tmp_path / "other"  # another experiment's claims
    other.mkdir()
    write_claims(other, [protocol.Claim(**{**ROW, "command": "emaprobe run probe_lag --out other"})])
    assert main(["run", "folder", "--out", str(other)]) == 2
    assert "claims.json was not written by `emaprobe run folder`" in capsys.readouterr().err
    assert main(["run", "folder", "--out", str(mine), "--overwrite"]) == 0
    assert read_claims(mine)[0].command == "emaprobe run folder"
    protocol.run_experiment("folder", out=mine)  # its own report files: it goes on


def test_an_empty_out_is_refused(monkeypatch, tmp_path, capsys):
    # --out "" is the current folder: run from a checkout it would have replaced the project's README
    from emaprobe.cli import main

    _fake_experiment(monkeypatch)
    monkeypatch.chdir(tmp_path)
    for argv in (["run", "folder", "--out", ""], ["roles", "--smoke", "--out", " "]):
        assert main(argv) == 2
        assert "--out is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_roles_alias_refuses_results_of_other_settings(tmp_path, capsys):
    # `emaprobe roles --out DIR` skipped the check `emaprobe run roles --out DIR` makes, and replaced them
    from emaprobe.cli import main

    (tmp_path / "roles.json").write_text(json.dumps({"config": {"seeds": 5}}), encoding="utf-8")
    before = (tmp_path / "roles.json").read_bytes()
    assert main(["roles", "--smoke", "--no-treebank", "--quiet", "--out", str(tmp_path)]) == 2
    assert "roles.json holds roles results made with other settings" in capsys.readouterr().err
    assert (tmp_path / "roles.json").read_bytes() == before


def test_roles_removes_only_its_own_partial_files(tmp_path):
    from emaprobe.experiments import roles

    partial = tmp_path / roles.PARTIAL
    partial.mkdir()
    for name in ("seed-0.json", "seed-1.json", "other.pt"):
        (partial / name).write_text("x", encoding="utf-8")
    roles._drop_partial(tmp_path)
    assert sorted(p.name for p in partial.iterdir()) == ["other.pt"]
    (partial / "other.pt").unlink()
    roles._drop_partial(tmp_path)
    assert not partial.exists()


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="POSIX signals")
def test_sigterm_between_a_runs_stages_exits_130_saying_so(monkeypatch, tmp_path, capsys):
    # outside run_pool and the trainer, SIGTERM kept its default: the process died (143) with no word said
    import os
    import signal
    import time

    from emaprobe.cli import main

    mod = _fake_experiment(monkeypatch)

    def run(cfg, out):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this at once

    monkeypatch.setattr(mod, "run", run)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["run", "folder", "--out", str(tmp_path / "o")]) == 130
    assert capsys.readouterr().err == "emaprobe run: interrupted: SIGTERM\n"
    assert signal.getsignal(signal.SIGTERM) is before
