"""``emaprobe bench compare``: rows matched across runs, each side averaged, new / base, and the refusals."""

from __future__ import annotations

import json
import math

import matplotlib.image
import pytest

from emaprobe.cli import main
from emaprobe.experiments.bench_compare import compare, format_report


def _result(path, rows, card="Card X", benchmark="scan-cuda-grid", sha="aaaa"):
    path.write_text(json.dumps({"benchmark": benchmark, "card": card, "git_sha": sha, "rows": rows}))
    return path


def _grid(path, ms, sha="aaaa", **kw):
    # two shapes (B, T, D) with a time each; the second shape alone has an extra field
    rows = [{"B": 8, "T": 2048, "D": 256, "dtype": "bfloat16", "ms": ms[0]},
            {"B": 1, "T": 65536, "D": 256, "dtype": "bfloat16", "ms": ms[1], "extra": 2.0}]
    return _result(path, rows, sha=sha, **kw)


def test_ratios_are_new_over_base_of_each_sides_mean(tmp_path):
    base = [_grid(tmp_path / "b1.json", (1.0, 4.0)), _grid(tmp_path / "b2.json", (3.0, 4.0))]
    new = [_grid(tmp_path / "n1.json", (1.0, 5.0), sha="bbbb")]
    res = compare(base, new)
    assert res["benchmark"] == "scan-cuda-grid" and res["card"] == "Card X"
    assert res["base"]["git_shas"] == ["aaaa", "aaaa"] and res["new"]["git_shas"] == ["bbbb"]
    first, second = res["rows"]
    assert first["row"] == "B=8" and second["row"] == "B=1"  # the fewest varying fields that tell rows apart
    assert first["ms"] == {"base": 2.0, "new": 1.0, "ratio": 0.5}
    assert second["ms"]["ratio"] == pytest.approx(1.25)
    s = res["summary"]["ms"]
    assert s["rows"] == 2 and s["geomean_ratio"] == pytest.approx(math.sqrt(0.5 * 1.25))
    assert (s["min_ratio"], s["min_row"], s["max_ratio"], s["max_row"]) == (0.5, "B=8", 1.25, "B=1")
    # a field one row lacks is compared where both sides have it
    assert first["extra"] is None and second["extra"]["ratio"] == 1.0 and res["summary"]["extra"]["rows"] == 1
    assert compare(base, new, ("ms", "ms"))["metrics"] == ["ms"]  # a field named twice is listed once
    text = format_report(res, ("ms",))
    assert "new (1 run, bbbb) / base (2 runs, aaaa)" in text and "(0.5000)" in text and "(1.2500)" in text


def test_cli_writes_json_and_png_and_prints_the_rows(tmp_path, capsys):
    a, b = _grid(tmp_path / "a.json", (2.0, 4.0)), _grid(tmp_path / "b.json", (1.0, 4.0), sha="bbbb")
    out = tmp_path / "out"
    assert main(["bench", "compare", "--base", str(a), "--new", str(b), "--metric", "ms", "--out", str(out),
                 "--tag", "t"]) == 0
    printed = capsys.readouterr().out
    assert "B=8 " in printed and "(0.5000)" in printed
    res = json.loads((out / "compare_scan-cuda-grid_card-x_t.json").read_text())
    assert res["metrics"] == ["ms"] and res["summary"]["ms"]["geomean_ratio"] == pytest.approx(math.sqrt(0.5))
    assert res["base"]["files"] == [str(a)] and res["git_sha"] and res["argv"]
    img = matplotlib.image.imread(out / "compare_scan-cuda-grid_card-x_t.png")
    assert img.shape[0] > 100 and img.shape[1] > 100


def test_refuses_another_card_another_benchmark_and_files_that_are_no_result(tmp_path):
    a = _grid(tmp_path / "a.json", (1.0, 1.0))
    with pytest.raises(ValueError, match="one benchmark on one card"):
        compare([a], [_grid(tmp_path / "c.json", (1.0, 1.0), card="Card Y")])
    with pytest.raises(ValueError, match="one benchmark on one card"):
        compare([a, _grid(tmp_path / "d.json", (1.0, 1.0), benchmark="scan-cuda")], [a])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a benchmark JSON"):
        compare([a], [tmp_path / "bad.json"])
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json: not a benchmark JSON"):
        compare([tmp_path / "list.json"], [a])
    with pytest.raises(ValueError, match="missing.json: no such file"):
        compare([a], [tmp_path / "missing.json"])
    other_rows = _result(tmp_path / "o.json", [{"B": 2, "T": 4, "D": 8, "dtype": "bfloat16", "ms": 1.0}])
    with pytest.raises(ValueError, match="must be repeats of one command"):
        compare([a, other_rows], [a])


def test_cli_error_names_the_problem_and_writes_nothing(tmp_path, capsys):
    a = _grid(tmp_path / "a.json", (1.0, 1.0))
    out = tmp_path / "out"
    assert main(["bench", "compare", "--base", str(a), "--new", str(a), "--metric", "nope", "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert "--metric ['nope']" in err and "ms" in err
    assert not out.exists()


def test_key_names_the_fields_rows_are_matched_on(tmp_path):
    # bench lm rows whose FLOP counts moved between the trees: no default match, a match on --key
    def lm(path, params, tps):
        rows = [{"part": "train", "model": "spen", "T": 1024, "params": params, "tokens_per_s": tps},
                {"part": "train", "model": "gpt", "T": 1024, "params": 7, "tokens_per_s": 100.0}]
        return _result(path, rows, benchmark="lm")

    base, new = lm(tmp_path / "a.json", 5, 200.0), lm(tmp_path / "b.json", 6, 300.0)
    res = compare([base], [new])  # gpt's row matches; spen's is in one side only
    assert [r["row"] for r in res["rows"]] == ["part=train model=gpt T=1024 params=7"]
    assert res["unmatched"] == {"base": ["part=train model=spen T=1024 params=5"],
                                "new": ["part=train model=spen T=1024 params=6"]}
    assert "only in the base runs (1 rows, not compared)" in format_report(res)
    res = compare([base], [new], ("tokens_per_s",), key=("model", "T"))
    assert [(r["row"], r["tokens_per_s"]["ratio"]) for r in res["rows"]] == [("model=spen", 1.5), ("model=gpt", 1.0)]
    assert "params" in compare([base], [new], key=("model", "T"))["metrics"]  # a number not in the key is compared
    with pytest.raises(ValueError, match="two rows share the key .* --key"):
        compare([base], [new], key=("T",))
    with pytest.raises(ValueError, match="no row of the base runs matches .* --key"):
        compare([base], [_result(tmp_path / "c.json", [{"part": "generate", "model": "spen", "tokens_per_s": 1.0}],
                                 benchmark="lm")])
