"""A store damaged by hand, then the search run again (and status, export, report on it): every
damaged file is named on one line that ends with what to do (restore it, or ``--repair``), the exit
code is 1, there is no traceback, and every file of the store — the damaged one included — is
byte-for-byte what it was.  Then the same damaged stores (and a few damages only ``--repair``
looks for) repaired with ``epnas search FILE --repair``: exit 0, the search Succeeded, the damaged
file kept as ``*.damaged``, every intact result and weight object byte-for-byte where it was (or
kept aside, when the repair says so), no child with an intact result trained again.  Warm workers
and the real trainer; one finished tiny search (with final training) copied per case."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).parent
TINY = HERE / "searches" / "tiny-synthetic.yaml"
EPNAS = [sys.executable, "-m", "epnas.cli"]
REPAIR_HINT = "restore it from a backup, or run `epnas search FILE --repair` to rebuild from what is intact"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    root = tmp_path_factory.mktemp("damaged")
    search = root / "search.yaml"
    search.write_text(TINY.read_text() + "  finalTraining: {top: 1, epochs: 2}\n")
    done = subprocess.run(
        [*EPNAS, "search", str(search), "--store", (root / "store").as_uri(), "--parallelism", "2", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return search, root / "store"


def first(directory: pathlib.Path, pattern: str) -> pathlib.Path:
    return sorted(directory.glob(pattern))[0]


def truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


# case → (file to damage (glob under the search root), how, command, words in the one line)
CASES = {
    "checkpoint truncated": ("state/checkpoint.json", truncate, "search", "state/checkpoint.json is damaged"),
    "checkpoint empty object": (
        "state/checkpoint.json",
        lambda p: p.write_text("{}"),
        "search",
        "state/checkpoint.json is damaged (no episode",
    ),
    "checkpoint a list": (
        "state/checkpoint.json",
        lambda p: p.write_text("[1, 2]"),
        "search",
        "state/checkpoint.json is damaged",
    ),
    "checkpoint binary junk": (
        "state/checkpoint.json",
        lambda p: p.write_bytes(b"\xff\xfe\x00junk"),
        "search",
        "state/checkpoint.json is damaged",
    ),
    "checkpoint unknown field": (
        "state/checkpoint.json",
        lambda p: p.write_text(p.read_text().replace('"episode"', '"episode": 0, "bogus"', 1)),
        "search",
        "state/checkpoint.json is damaged",
    ),
    "history garbage": (
        "state/history/e000-s00.json",
        lambda p: p.write_text("garbage"),
        "search",
        "state/history/e000-s00.json is damaged",
    ),
    "history not records": (
        "state/history/e000-s01.json",
        lambda p: p.write_text('{"a": 1}'),
        "search",
        "state/history/e000-s01.json is damaged",
    ),
    "history step missing": ("state/history/e001-s01.json", lambda p: p.unlink(), "search", "state/history is damaged"),
    "policy truncated": (
        "state/policy-e001.safetensors",
        truncate,
        "search",
        "state/policy-e001.safetensors is damaged",
    ),
    "policy empty": (
        "state/policy-e001.safetensors",
        lambda p: p.write_bytes(b""),
        "search",
        "state/policy-e001.safetensors is damaged",
    ),
    "stored spec damaged": ("search.yaml", truncate, "search", "search.yaml is damaged"),
    "summary damaged for status": ("state/summary.json", truncate, "status", "state/summary.json is damaged"),
    "history garbage for status": (
        "state/history/e000-s00.json",
        lambda p: p.write_text("garbage"),
        "status",
        "state/history/e000-s00.json is damaged",
    ),
    "history garbage for report": (
        "state/history/e000-s00.json",
        lambda p: p.write_text("garbage"),
        "report",
        "state/history/e000-s00.json is damaged",
    ),
    "summary damaged for export": ("state/summary.json", truncate, "export", "state/summary.json is damaged"),
    "final result truncated for export": ("final/*/result.json", truncate, "export", "/result.json is damaged"),
    "final weights truncated for export": (
        "final/*/weights.safetensors",
        truncate,
        "export",
        "/weights.safetensors is damaged",
    ),
    "final task not JSON for export": (
        "final/*/arch.json",
        lambda p: p.write_text("{"),
        "export",
        "/arch.json is damaged",
    ),
}


def digest(root: pathlib.Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_file_is_named_and_nothing_changes(case, finished, tmp_path) -> None:
    search, store = finished
    pattern, damage, command, words = CASES[case]
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    root = copy / "tiny-synthetic"
    damage(first(root, pattern))
    before = digest(copy)
    args = {
        "search": ["search", str(search), "--store", copy.as_uri(), "--quiet"],
        "status": ["status", str(root)],
        "export": ["export", str(root), "--out", str(tmp_path / "export")],
        "report": ["report", str(root), "--out", str(tmp_path / "report")],
    }[command]
    done = subprocess.run([*EPNAS, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert words in lines[0], lines[0]
    if command != "export":  # epnas export words its own messages
        assert lines[0].endswith(REPAIR_HINT), lines[0]
    assert digest(copy) == before, "the store changed"
    assert not (tmp_path / "export" / "model.pt").exists()


def copy_result(p: pathlib.Path) -> None:
    """Another child's result in this child's folder."""
    p.write_bytes((p.parent.parent / "e000-s00-c01" / "result.json").read_bytes())


# damages a rerun without --repair does not read (a finished search merges no weights, plans no step,
# reads no child result) → (file to damage, how, the children trained again by the repair (folder names))
REPAIR_ONLY = {
    "weight index garbage": ("weights/index.json", lambda p: p.write_text("garbage"), set()),
    "weight object truncated": ("weights/objects/*.safetensors", truncate, set()),
    "pending plan garbage": ("state/pending-step.json", lambda p: p.write_text("[1"), set()),
    "policy update garbage": ("state/updates/e000.json", lambda p: p.write_text("{"), set()),
    "child task not JSON": ("children/e000-s01-c02/arch.json", lambda p: p.write_text("{"), set()),
    "child result truncated": ("children/e001-s00-c01/result.json", truncate, {"e001-s00-c01"}),
    "child result of another child": ("children/e000-s00-c00/result.json", copy_result, {"e000-s00-c00"}),
}
RETRAINED = {
    "final result truncated for export": {"e000-s01-c00"},
    "final weights truncated for export": {"e000-s01-c00"},
}
SUPERSEDED = {
    "weight object truncated": {"weights/index.json"}
}  # when the rebuilt object's bytes differ (safetensors metadata order)
REPAIRS = {
    **{case: (pattern, damage, RETRAINED.get(case, set())) for case, (pattern, damage, _, _) in CASES.items()},
    **REPAIR_ONLY,
}


def kept(root: pathlib.Path) -> dict[str, str]:
    """Every result and weight object (and child weights) of the search, by digest."""
    files = [
        *root.glob("children/*/result.json"),
        *root.glob("final/*/result.json"),
        *root.glob("weights/objects/*"),
        *root.glob("children/*/weights.safetensors"),
    ]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize("case", sorted(REPAIRS))
def test_repair_moves_the_damage_aside_and_finishes(case, finished, tmp_path) -> None:
    search, store = finished
    pattern, damage, retrained = REPAIRS[case]
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    root = copy / "tiny-synthetic"
    target = first(root, pattern)
    damage(target)
    damaged = target.read_bytes() if target.exists() else None
    name = str(target.relative_to(root))
    before = {k: v for k, v in kept(root).items() if k != name}
    log = tmp_path / "trained.log"
    log.touch()
    trainer = f"{sys.executable} {HERE / 'counting_trainer.py'}"
    done = subprocess.run(
        [
            *EPNAS,
            "search",
            str(search),
            "--store",
            copy.as_uri(),
            "--quiet",
            "--repair",
            "--parallelism",
            "2",
            "--trainer-command",
            trainer,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "EPNAS_COUNT_LOG": str(log), "EPNAS_TRAINER_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert json.loads((root / "state" / "summary.json").read_text())["phase"] == "Succeeded"
    moved = {
        line.split()[3]: line.split(" to ", 1)[1].split(";")[0]
        for line in done.stderr.splitlines()
        if line.startswith("epnas: moved aside ")
    }
    if damaged is not None:
        assert name in moved and moved[name].endswith(".damaged"), done.stderr
        assert (root / moved[name]).read_bytes() == damaged, "the damaged file was not kept as it was"
    for key, sha in before.items():  # in place, or kept aside as it was when the repair says it moved it
        where = root / (moved[key] if key in moved else key)
        assert hashlib.sha256(where.read_bytes()).hexdigest() == sha, f"{key} changed"
    if not retrained:  # the replay reproduced every intact state file byte for byte: none was superseded
        assert {k for k, v in moved.items() if ".superseded" in v} <= SUPERSEDED.get(case, set()), done.stderr
    started = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("start ")]
    assert len(started) == len(set(started)), f"trained twice: {started}"
    superseded = {k.split("/")[1] for k, v in moved.items() if k.endswith("/result.json") and v.endswith(".superseded")}
    assert retrained <= set(started) <= retrained | superseded, (started, done.stderr)
    if case in CASES and CASES[case][2] != "search":  # what failed before works now
        command = CASES[case][2]
        args = {
            "status": ["status", str(root)],
            "export": ["export", str(root), "--out", str(tmp_path / "export"), "--no-onnx"],
            "report": ["report", str(root), "--out", str(tmp_path / "report")],
        }[command]
        again = subprocess.run([*EPNAS, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
