"""Smoke test of the public race (bench/race.py): every method trains the same number of real
children on the same problem, and the tables come out.  The winning margins are the benchmark's
business (docs/benchmarks.md), not this test's."""

from __future__ import annotations

import json
import pathlib
import sys

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import race  # noqa: E402


def test_every_method_trains_the_same_children_and_the_tables_are_written(tmp_path) -> None:
    out = tmp_path / "race"
    assert (
        race.main(["--problems", "digits-quick", "--seeds", "1", "--children", "4", "--epochs", "1", "--out", str(out)])
        == 0
    )
    runs = json.loads((out / "race.json").read_text())["runs"]
    assert sorted(r["method"] for r in runs) == sorted(race.METHODS)
    for run in runs:
        assert run["children"] == 4 and len(run["trained"]) == 4, run["method"]
        assert run["feasible"] == sum(t["feasible"] and not t["failed"] for t in run["trained"])
        if run["best_val"] is not None:
            assert run["best_val"] == max(t["val"] for t in run["trained"] if t["feasible"] and not t["failed"])
    table = (out / "race.md").read_text()
    assert "### digits-quick (4 trained children per run)" in table
    for method in race.METHODS:
        assert f"| {method} | 1 |" in table
    assert "Targets for `epnas`:" in table
    assert not (out / "stores" / "digits-quick" / "epnas-s1").exists()  # stores are removed unless --keep-stores
