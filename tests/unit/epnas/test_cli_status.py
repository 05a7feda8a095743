"""`epnas status`: the top children, children by status, failed children with their reasons, --json."""

from __future__ import annotations

import json

from click.testing import CliRunner

from epnas.cli import main
from epnas.search import SearchLoop
from epnas.store import open_store

from .test_search import ToyExecutor, search_doc


def toy_search(tmp_path):
    uri = (tmp_path / "store").as_uri()
    SearchLoop(search_doc(), store=open_store(uri), store_uri=uri, executor=ToyExecutor(fail={"e000-s00-c01"})).run()
    return tmp_path / "store"


def test_json_lists_the_top_children_feasible_first_and_the_failed_ones(tmp_path) -> None:
    store = toy_search(tmp_path)
    result = CliRunner().invoke(main, ["status", str(store), "--json", "--top", "4"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["summary"]["phase"] == "Succeeded"
    top = out["top"]
    assert 1 <= len(top) <= 4 and len({t["hash"] for t in top}) == len(top)
    keys = [(not t["feasible"], -(t["valAccuracy"] if t["feasible"] else t["reward"])) for t in top]
    assert keys == sorted(keys)  # feasible first, then by accuracy (feasible) or reward
    history = [r for f in sorted((store / "state" / "history").iterdir()) for r in json.loads(f.read_text())]
    best_feasible = max((r["val_accuracy"] for r in history if r["feasible"] and r["status"] != "failed"), default=None)
    if best_feasible is not None:
        assert top[0]["feasible"] and top[0]["valAccuracy"] == best_feasible
    assert out["failed"] == [{"child": "e000-s00-c01", "exitCode": 1, "reason": "Error: RuntimeError: boom"}]


def test_text_shows_the_table_and_why_children_failed(tmp_path) -> None:
    store = toy_search(tmp_path)
    result = CliRunner().invoke(main, ["status", str(store)])
    assert result.exit_code == 0, result.output
    assert "Top children (feasible first)" in result.output
    assert "failed e000-s00-c01: exit code 1, Error: RuntimeError: boom" in result.output


def test_a_damaged_summary_is_named_not_reported_missing(tmp_path) -> None:
    store = toy_search(tmp_path)
    (store / "state" / "summary.json").write_text("{truncated")
    result = CliRunner().invoke(main, ["status", str(store)])
    assert result.exit_code == 1 and "state/summary.json is damaged" in result.output
    result = CliRunner().invoke(main, ["status", str(tmp_path / "nothing-here")])
    assert result.exit_code == 1 and "no search state under" in result.output
