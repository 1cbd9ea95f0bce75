"""The README's claims table against the committed results: every row is one claim of some
``results/**/claims.json``, with the same paper figure, mean, std, seeds and verdict as printed.

A rerun that moves a claim (a new seed, a new verdict) and a README left behind fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from emaprobe.experiments.reproduce import read_all

REPO = Path(__file__).resolve().parents[2]


def claims_table(text: str) -> list[dict]:
    """The rows of the table under ``## The claims``: area, claim, paper, ours (mean ± std), seeds, verdict."""
    if "## The claims" not in text:
        raise ValueError("README.md has no '## The claims' section")
    section = text.split("## The claims", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| area"):
            continue
        area, claim, paper, ours, seeds, verdict = (c.strip() for c in line.strip().strip("|").split("|"))
        mean, std = (v.strip() for v in ours.split("±"))
        rows.append(dict(area=area, claim=claim, paper=paper, mean=mean, std=std, seeds=int(seeds), verdict=verdict))
    return rows


def printed_as(text: str, value) -> bool:
    """Whether ``value`` rounds to ``text`` at the digits ``text`` shows (``-`` stands for no value)."""
    if text == "-":
        return value is None
    if value is None:
        return False
    digits = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text) - float(value)) <= 0.5 * 10.0 ** -digits + 1e-12


def backing(row: dict, claims: list) -> list:
    return [c for c in claims if c.verdict == row["verdict"] and c.seeds == row["seeds"]
            and printed_as(row["paper"], c.paper) and printed_as(row["mean"], c.ours)
            and printed_as(row["std"], c.std)]


def test_the_matcher_reads_rounding_and_missing_values():
    assert printed_as("-0.005", -0.00489) and printed_as("+0.045", 0.0449) and printed_as("8", 8.0)
    assert not printed_as("-0.005", -0.00698) and not printed_as("-", 0.0) and not printed_as("0", None)
    row = claims_table("## The claims\n\n| area | claim | paper | ours (mean ± std) | seeds | verdict |\n"
                       "|---|---|---|---|---|---|\n| content | x | 0 | -0.005 ± 0.004 | 3 | confirmed |\n\n## Next\n")
    assert row == [dict(area="content", claim="x", paper="0", mean="-0.005", std="0.004", seeds=3,
                        verdict="confirmed")]


def test_every_readme_row_is_a_committed_claim():
    readme, results = REPO / "README.md", REPO / "results"
    if not readme.is_file() or not results.is_dir():
        pytest.skip("needs the repository's README.md and results/ (an installed package has neither)")
    claims = [c for entry in read_all(results) for c in entry.claims]
    rows = claims_table(readme.read_text(encoding="utf-8"))
    assert rows, "README.md's claims table has no rows"
    used = []
    for row in rows:
        found = backing(row, claims)
        assert found, (f"README row '{row['claim']}' ({row['mean']} ± {row['std']}, {row['seeds']} seeds, "
                       f"{row['verdict']}) matches no claim in results/**/claims.json: rerun "
                       "`emaprobe reproduce --from results --out results/reproduce` and copy the figures")
        used.extend(id(c) for c in found)
    assert len(used) == len(set(used)), "two README rows print the same committed claim"
