"""A store damaged by hand, then the search run again (and status, export, report on it): every
damaged file is named on one line, the exit code is 1, there is no traceback, and every file of
the store — the damaged one included — is byte-for-byte what it was.  Warm workers and the real
trainer; one finished tiny search (with final training) copied per case."""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).parent
TINY = HERE / "searches" / "tiny-synthetic.yaml"
EPNAS = [sys.executable, "-m", "epnas.cli"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    root = tmp_path_factory.mktemp("damaged")
    search = root / "search.yaml"
    search.write_text(TINY.read_text() + "  finalTraining: {top: 1, epochs: 2}\n")
    done = subprocess.run([*EPNAS, "search", str(search), "--store", (root / "store").as_uri(), "--parallelism", "2", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return search, root / "store"


def first(directory: pathlib.Path, pattern: str) -> pathlib.Path:
    return sorted(directory.glob(pattern))[0]


def truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


# case → (file to damage (glob under the search root), how, command, words in the one line)
CASES = {
    "checkpoint truncated": ("state/checkpoint.json", truncate, "search", "state/checkpoint.json is damaged"),
    "checkpoint empty object": ("state/checkpoint.json", lambda p: p.write_text("{}"), "search", "state/checkpoint.json is damaged (no episode"),
    "checkpoint a list": ("state/checkpoint.json", lambda p: p.write_text("[1, 2]"), "search", "state/checkpoint.json is damaged"),
    "checkpoint binary junk": ("state/checkpoint.json", lambda p: p.write_bytes(b"\xff\xfe\x00junk"), "search", "state/checkpoint.json is damaged"),
    "checkpoint unknown field": ("state/checkpoint.json", lambda p: p.write_text(p.read_text().replace('"episode"', '"episode": 0, "bogus"', 1)),
                                 "search", "state/checkpoint.json is damaged"),
    "history garbage": ("state/history/e000-s00.json", lambda p: p.write_text("garbage"), "search", "state/history/e000-s00.json is damaged"),
    "history not records": ("state/history/e000-s01.json", lambda p: p.write_text('{"a": 1}'), "search", "state/history/e000-s01.json is damaged"),
    "history step missing": ("state/history/e001-s01.json", lambda p: p.unlink(), "search", "state/history is damaged"),
    "policy truncated": ("state/policy-e001.safetensors", truncate, "search", "state/policy-e001.safetensors is damaged"),
    "policy empty": ("state/policy-e001.safetensors", lambda p: p.write_bytes(b""), "search", "state/policy-e001.safetensors is damaged"),
    "stored spec damaged": ("search.yaml", truncate, "search", "search.yaml is damaged"),
    "summary damaged for status": ("state/summary.json", truncate, "status", "state/summary.json is damaged"),
    "history garbage for status": ("state/history/e000-s00.json", lambda p: p.write_text("garbage"), "status", "state/history/e000-s00.json is damaged"),
    "history garbage for report": ("state/history/e000-s00.json", lambda p: p.write_text("garbage"), "report", "state/history/e000-s00.json is damaged"),
    "summary damaged for export": ("state/summary.json", truncate, "export", "state/summary.json is damaged"),
    "final result truncated for export": ("final/*/result.json", truncate, "export", "/result.json is damaged"),
    "final weights truncated for export": ("final/*/weights.safetensors", truncate, "export", "/weights.safetensors is damaged"),
    "final task not JSON for export": ("final/*/arch.json", lambda p: p.write_text("{"), "export", "/arch.json is damaged"),
}


def digest(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_file_is_named_and_nothing_changes(case, finished, tmp_path) -> None:
    search, store = finished
    pattern, damage, command, words = CASES[case]
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    root = copy / "tiny-synthetic"
    damage(first(root, pattern))
    before = digest(copy)
    args = {"search": ["search", str(search), "--store", copy.as_uri(), "--quiet"],
            "status": ["status", str(root)],
            "export": ["export", str(root), "--out", str(tmp_path / "export")],
            "report": ["report", str(root), "--out", str(tmp_path / "report")]}[command]
    done = subprocess.run([*EPNAS, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert words in lines[0], lines[0]
    assert digest(copy) == before, "the store changed"
    assert not (tmp_path / "export" / "model.pt").exists()
