"""``emaprobe reproduce``: runs registered experiments (a fake one here) or reads their committed
claims, and builds one Markdown + self-contained HTML report of every claim."""

from __future__ import annotations

import base64
import json
import sys
import types
from dataclasses import asdict, dataclass

import pytest

from emaprobe.cli import main
from emaprobe.experiments import protocol
from emaprobe.experiments.protocol import Claim, write_claims
from emaprobe.experiments.reproduce import read_all, reproduce
from emaprobe.utils import atomic_write_json, read_json


def _png(path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [1, 0, 2])
    fig.savefig(path, dpi=40)
    plt.close(fig)


def _fake_module(name: str, *, requires=None, fail: bool = False) -> types.ModuleType:
    """An experiment that follows the protocol: measures a mean over seeds, reports one claim."""
    mod = types.ModuleType(f"fake_experiments.{name}")

    @dataclass(frozen=True)
    class Config:
        seeds: int = 5
        scale: float = 1.0

    def run(cfg, out):
        if fail:
            raise RuntimeError("the fake experiment broke")
        values = [cfg.scale * (2.0 + 0.1 * s) for s in range(cfg.seeds)]
        atomic_write_json(out / "result.json", {"config": asdict(cfg), "values": values, "seeds": cfg.seeds})

    def report(out):
        r = read_json(out / "result.json")
        mean = sum(r["values"]) / len(r["values"])
        std = (sum((v - mean) ** 2 for v in r["values"]) / max(len(r["values"]) - 1, 1)) ** 0.5
        write_claims(out, [Claim(claim="ratio", metric="ratio to baseline", paper=2.0, ours=mean, std=std,
                                 seeds=r["seeds"], scale="toy | scale", verdict="confirmed",
                                 command=f"emaprobe run {name}", labels="0", note="a fake claim")])
        _png(out / "curve.png")

    mod.NAME, mod.Config, mod.run, mod.report, mod.RESULT = name, Config, run, report, "result.json"
    mod.smoke = lambda: Config(seeds=3, scale=0.5)
    mod.BUDGETS = {"gpu": lambda: Config(seeds=3, scale=4.0)}
    if requires is not None:
        mod.requires = requires
    return mod


@pytest.fixture
def fake_registry(monkeypatch):
    """Only fake experiments are registered while a test runs."""
    modules = {
        "fake": _fake_module("fake"),
        "needs_data": _fake_module("needs_data", requires=lambda cfg: ["EMAPROBE_DATA/text not found"]),
    }
    registry = {}
    for name, mod in modules.items():
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        registry[name] = mod.__name__
    monkeypatch.setattr(protocol, "EXPERIMENTS", registry)
    return modules


def test_smoke_runs_each_experiment_skips_with_reasons_and_reports(fake_registry, tmp_path):
    report = reproduce("smoke", out=tmp_path, log=lambda *_: None)
    by = {e.name: e for e in report.entries}
    assert by["fake"].status == "ran" and by["fake"].budget == "smoke"
    assert by["needs_data"].status == "skipped" and "EMAPROBE_DATA/text not found" in by["needs_data"].reason
    claim = by["fake"].claims[0]
    assert claim.seeds == 3 and claim.ours == pytest.approx(0.5 * 2.1)  # the smoke config really ran

    md = (tmp_path / "report.md").read_text()
    assert "| fake | ratio | ratio to baseline | 2 | 1.05 ± 0.05 | 3 | toy \\| scale | 0 | **confirmed** |" in md
    assert "`emaprobe run fake`" in md and "needs_data** (skipped" in md
    assert "![fake: curve](fake/curve.png)" in md

    page = (tmp_path / "report.html").read_text()
    png = (tmp_path / "fake" / "curve.png").read_bytes()
    assert base64.b64encode(png).decode() in page  # the figure is embedded, not linked
    assert "<span class='verdict confirmed'>confirmed</span>" in page and "EMAPROBE_DATA/text not found" in page
    assert json.loads((tmp_path / "report.json").read_text())["experiments"][0]["claims"][0]["claim"] == "ratio"


def test_gpu_budget_without_cuda_is_skipped_with_its_reason(fake_registry, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = reproduce("gpu", out=tmp_path, names=["fake"], log=lambda *_: None)
    (entry,) = report.entries
    assert entry.status == "skipped" and "CUDA" in entry.reason and not (tmp_path / "fake").exists()


def test_from_reads_committed_claims_without_running(fake_registry, tmp_path):
    results = tmp_path / "results"
    (results / "fake").mkdir(parents=True)
    fake_registry["fake"].run(fake_registry["fake"].Config(), results / "fake")
    fake_registry["fake"].report(results / "fake")
    fake_registry["fake"].run = lambda cfg, out: pytest.fail("--from must not run anything")

    assert main(["reproduce", "--from", str(results), "--out", str(tmp_path / "rep")]) == 0
    entries = {e.name: e for e in read_all(results)}
    assert entries["fake"].status == "read" and entries["fake"].claims[0].seeds == 5
    assert entries["needs_data"].status == "missing" and "emaprobe run needs_data" in entries["needs_data"].reason
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| fake | ratio |" in md and "2.2 ± 0.16" in md
    assert "results/fake/curve.png" in md  # linked relative to the report folder


def test_a_failed_experiment_is_reported_and_sets_the_exit_code(monkeypatch, tmp_path, capsys):
    mod = _fake_module("broken", fail=True)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(protocol, "EXPERIMENTS", {"broken": mod.__name__, "absent": "fake_experiments.nowhere"})
    assert main(["reproduce", "--budget", "smoke", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "the fake experiment broke" in out and "No module named" in out
    assert "RuntimeError: the fake experiment broke" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(
    "content, words",
    [
        (b"{not json", "malformed JSON at line 1"),
        (b'{"broken', "malformed JSON at line 1"),
        (b"[\xff\xfe]", "not UTF-8 text (byte 1"),
        (b'{"claim": "x"}', "expected a JSON list of claims"),
        (b'[{"claim": "x", "metric": "m", "paper": 1, "ours": 1, "std": null, "seeds": 3, "scale": "s",'
         b' "verdict": "maybe", "command": "c"}]', "row 0: claim 'x': verdict must be one of"),
        (b'[{"claim": "x", "ourz": 1}]', "row 0 has unknown fields ['ourz']"),
    ],
    ids=["bad-json", "cut-short", "not-utf8", "not-a-list", "bad-verdict", "unknown-field"],
)
def test_an_unreadable_claims_json_fails_its_entry_and_the_report_is_still_written(fake_registry, tmp_path, capsys,
                                                                                   content, words):
    root = tmp_path / "results"
    write_claims(root / "good", [Claim(claim="c1", metric="m", paper=None, ours=1.0, std=None, seeds=3, scale="s",
                                       verdict="inconclusive", command="emaprobe run good")])
    folder = root / "fake"
    folder.mkdir(parents=True)
    (folder / "claims.json").write_bytes(content)
    entries = {e.name: e for e in read_all(root)}
    assert entries["fake"].status == "failed" and str(folder / "claims.json") in entries["fake"].reason
    assert words in entries["fake"].reason
    assert entries["good"].status == "read", "one bad file costs its own row, not the others'"
    assert main(["reproduce", "--from", str(root), "--out", str(tmp_path / "rep")]) == 1
    printed = capsys.readouterr().out
    assert "fake" in printed and str(folder / "claims.json") in printed and "1 experiment(s) failed" in printed
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| good | c1 |" in md and str(folder / "claims.json") in md


def test_only_finds_an_experiment_where_the_whole_read_finds_it(fake_registry, tmp_path):
    root = tmp_path / "results"
    claim = Claim(claim="c1", metric="m", paper=None, ours=1.0, std=None, seeds=3, scale="s",
                  verdict="inconclusive", command="emaprobe run fake")
    write_claims(root / "probes" / "fake", [claim])
    (entry,) = read_all(root, ["fake"])  # as results/probes/probe_lag for --only probe_lag
    assert (entry.name, entry.status, entry.folder) == ("probes/fake", "read", str(root / "probes" / "fake"))
    assert [e.name for e in read_all(root) if e.status == "read"] == [entry.name]


def test_a_run_into_folders_of_other_settings_is_refused_before_anything_runs(fake_registry, tmp_path, capsys):
    reproduce("smoke", out=tmp_path, names=["fake"], log=lambda *_: None)
    before = (tmp_path / "fake" / "result.json").read_bytes()
    fake_registry["fake"].run = lambda cfg, out: pytest.fail("a refused run must not start")
    # --budget cpu: fake has no cpu budget, so its default (5 seeds, scale 1) against the smoke run's
    assert main(["reproduce", "--budget", "cpu", "--only", "fake", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'fake' / 'result.json'} holds fake results made with other settings" in err
    assert "scale: 0.5 there, 1.0 now; seeds: 3 there, 5 now" in err and "--overwrite" in err
    assert (tmp_path / "fake" / "result.json").read_bytes() == before
    fake_registry["fake"].run = _fake_module("fake").run
    assert main(["reproduce", "--budget", "cpu", "--only", "fake", "--out", str(tmp_path), "--overwrite"]) == 0
    assert read_json(tmp_path / "fake" / "result.json")["seeds"] == 5
    # the same budget again: the same config, so it goes on (reruns) without a word
    assert main(["reproduce", "--budget", "cpu", "--only", "fake", "--out", str(tmp_path)]) == 0


def test_bad_arguments_are_named(tmp_path, capsys):
    assert main(["reproduce", "--from", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["reproduce", "--from", str(tmp_path), "--budget", "smoke", "--out", str(tmp_path)]) == 2
    assert "give one" in capsys.readouterr().err


def test_from_a_folder_without_claims_or_an_unknown_only_name_is_an_error(fake_registry, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["reproduce", "--from", str(empty), "--out", str(tmp_path / "rep")]) == 2
    assert "no claims.json in it or below" in capsys.readouterr().err and not (tmp_path / "rep").exists()
    root = tmp_path / "results"
    write_claims(root / "fake", [Claim(claim="c1", metric="m", paper=None, ours=1.0, std=None, seeds=3, scale="s",
                                       verdict="inconclusive", command="emaprobe run fake")])
    with pytest.raises(ValueError, match=r"--only nope: neither an experiment nor a folder of .* folders: \['fake'\]"):
        read_all(root, ["nope"])
    # a registered experiment without claims yet is still listed, as missing
    assert [e.status for e in read_all(root, ["fake", "needs_data"])] == ["read", "missing"]


def test_from_finds_claims_in_nested_folders(fake_registry, tmp_path):
    root = tmp_path / "results"
    claim = Claim(claim="c1", metric="m", paper=None, ours=1.0, std=None, seeds=3, scale="s",
                  verdict="inconclusive", command="emaprobe run probe_x")
    write_claims(root / "probes" / "probe_x", [claim])
    entries = {e.name: e for e in read_all(root)}
    assert entries["probes/probe_x"].status == "read"
    assert [c.claim for c in entries["probes/probe_x"].claims] == ["c1"]
    # registered experiments with no claims anywhere are listed as missing, the found one is not repeated
    assert "probe_x" not in entries
    assert all(e.status == "missing" for name, e in entries.items() if name != "probes/probe_x")
