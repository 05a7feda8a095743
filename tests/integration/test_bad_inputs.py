"""A hostile user's inputs, one table: search files, flags, store URIs, commands, trainer inputs
and hostile weights.  Each case asserts the exit code (2: invalid input, 1: a fault or nothing to
act on), the line that names the field or file, no traceback, and that nothing in the working
directory — a pre-existing store included — was created, changed or deleted.

Damaged stores (truncated checkpoints, garbage history, …) are the other half of the table:
tests/integration/test_damaged_state.py.  The search-file cases live in tests/bad_inputs_table.py,
shared with tests/e2e/test_bad_searches.py: there every one that is a custom resource is applied
to the real API server and is refused by the CRD's schema and CEL rules or ends ``Failed``
(``InvalidSpec``) naming the field, with one controller that never crashes.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import pickle
import subprocess
import sys

import pytest
from bad_inputs_table import GOOD, SEARCH_FILES

EPNAS = [sys.executable, "-m", "epnas.cli"]
TRAINER = [sys.executable, "-m", "child_trainer"]

# name → (argv after `epnas`, exit code, words); {file} is a good search file, {store} a pre-existing store
COMMANDS = {
    "--store s3://": (["search", "{file}", "--store", "s3://"], 2, "s3://: no bucket in the URI"),
    "--store file://": (["search", "{file}", "--store", "file://"], 2, "file URIs must be file:///absolute/dir"),
    "--store file:///": (["search", "{file}", "--store", "file:///"], 2, "file URIs must be file:///absolute/dir"),
    "--store ''": (["search", "{file}", "--store", ""], 2, "the store URI is empty"),
    "--store with a bad bucket": (
        ["search", "{file}", "--store", "s3://Bad_Bucket/x"],
        2,
        "'Bad_Bucket' is not an S3 bucket name",
    ),
    "--store gs://": (["search", "{file}", "--store", "gs://b/x"], 2, "unsupported store scheme 'gs'"),
    "--store file://relative": (
        ["search", "{file}", "--store", "file://rel/dir"],
        2,
        "file URIs must be file:///absolute/dir",
    ),
    "a trainer command that does not exist": (
        ["search", "{file}", "--store", "{new}", "--trainer-command", "nonexistent-binary-xyz"],
        2,
        "'nonexistent-binary-xyz' is not an executable program",
    ),
    "a trainer command with an open quote": (
        ["search", "{file}", "--store", "{new}", "--trainer-command", 'python "unclosed'],
        2,
        "No closing quotation",
    ),
    "a search file that does not exist": (
        ["search", "/nonexistent/search.yaml"],
        2,
        "cannot read /nonexistent/search.yaml",
    ),
    "a directory as the search file": (["validate", "/"], 2, "File '/' is a directory"),
    "an unknown flag": (["search", "{file}", "--nope"], 2, "No such option '--nope'"),
    "--parallelism 0": (["search", "{file}", "--parallelism", "0"], 2, "Invalid value for '--parallelism'"),
    "status of nothing": (["status", "/nonexistent/dir"], 1, "no search state under file:///nonexistent/dir"),
    "status of a binary file": (["status", sys.executable], 2, "not UTF-8 text"),
    "export of nothing": (
        ["export", "/nonexistent", "--out", "{new}"],
        1,
        "no search history under file:///nonexistent",
    ),
    "report of nothing": (
        ["report", "/nonexistent", "--out", "{new}"],
        1,
        "no search history under file:///nonexistent",
    ),
    "status of an empty store": (["status", "{empty}"], 1, "no search state under"),
    "export of an empty store": (["export", "{empty}", "--out", "{new}"], 1, "no search history under"),
    "validate of a store": (["validate", "{store}/search.yaml"], 2, "not a valid ArchitectureSearch"),
}

# name → (trainer argv, exit code, words); {good} is a valid arch.json, {dir} a scratch directory
TRAINER_INPUTS = {
    "arch.json missing": (["--arch", "file:///nonexistent/arch.json", "--out", "{out}"], 2, "arch.json not found"),
    "arch.json binary junk": (["--arch", "{junk}", "--out", "{out}"], 2, "not valid JSON"),
    "arch.json truncated": (["--arch", "{trunc}", "--out", "{out}"], 2, "not valid JSON"),
    "arch.json not an architecture": (
        ["--arch", "{notarch}", "--out", "{out}"],
        2,
        "layers: Extra inputs are not permitted",
    ),
    "--weights names a file": (
        ["--arch", "{good}", "--out", "{out}", "--weights", "{junk}"],
        2,
        "is a file; it names the weight dictionary",
    ),
    "--endpoint not a URL": (
        ["--arch", "{good}", "--out", "s3://bucket/x", "--endpoint", "notaurl"],
        2,
        "is not an http:// or https:// URL",
    ),
    "--device tpu": (
        ["--arch", "{good}", "--out", "{out}", "--device", "tpu"],
        2,
        "Invalid value for '--device': 'tpu'",
    ),
    "--out with another scheme": (
        ["--arch", "{good}", "--out", "gs://b/x"],
        2,
        "--out must be file://, s3:// or a path",
    ),
    "--epochs 0": (["--arch", "{good}", "--out", "{out}", "--epochs", "0"], 2, "epochs"),
}

GOOD_ARCH = {
    "space": "image-layer",
    "layers": [{"op": "conv2d", "src1": 0, "channels": 8, "width": 3, "activation": "relu"}],
}


def snapshot(root: pathlib.Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with a search file, an empty store and a pre-existing store whose files must stay as they are."""
    (tmp_path / "search.yaml").write_bytes(GOOD)
    store = tmp_path / "store"
    (store / "state" / "history").mkdir(parents=True)
    (store / "search.yaml").write_text("precious: spec\n")
    (store / "state" / "checkpoint.json").write_text('{"episode": 1}')
    (store / "state" / "history" / "e000-s00.json").write_text("[]")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(argv: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=cwd)


def assert_clean_failure(result: subprocess.CompletedProcess, code: int, words: str) -> None:
    output = result.stderr + result.stdout
    assert result.returncode == code, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    assert words in output, output[-2000:]


@pytest.mark.parametrize("name", list(SEARCH_FILES))
def test_a_bad_search_file_is_refused_naming_the_problem(workdir, name):
    content, words = SEARCH_FILES[name]
    bad = workdir / "bad.yaml"
    bad.write_bytes(content)
    before = snapshot(workdir)

    # `search` validates first, with the same messages as `validate` (one case checks that below)
    assert_clean_failure(run([*EPNAS, "search", str(bad)], workdir), 2, words)
    assert snapshot(workdir) == before  # nothing written (no ./runs)


def test_validate_says_what_search_says(workdir):
    content, words = SEARCH_FILES["min > max"]
    bad = workdir / "bad.yaml"
    bad.write_bytes(content)

    assert_clean_failure(run([*EPNAS, "validate", str(bad)], workdir), 2, words)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_bad_command_line_fails_cleanly_and_touches_nothing(workdir, name):
    argv, code, words = COMMANDS[name]
    fill = {
        "{file}": str(workdir / "search.yaml"),
        "{store}": str(workdir / "store"),
        "{empty}": str(workdir / "empty"),
        "{new}": (workdir / "new").as_uri(),
    }
    argv = [fill.get(a, a.replace("{store}", str(workdir / "store"))) for a in argv]
    before = snapshot(workdir)

    assert_clean_failure(run([*EPNAS, *argv], workdir), code, words)
    assert snapshot(workdir) == before
    assert not (workdir / "new").exists() and not (workdir / "runs").exists() and not list(workdir.glob("s3:*"))


@pytest.mark.parametrize("name", list(TRAINER_INPUTS))
def test_bad_trainer_input_exits_2_and_writes_no_result(workdir, name):
    argv, code, words = TRAINER_INPUTS[name]
    files = {
        "junk": b"\x00\xff junk",
        "trunc": b"[1,2",
        "notarch": b'{"layers": 3}',
        "good": json.dumps(GOOD_ARCH).encode(),
    }
    for key, data in files.items():
        (workdir / f"{key}.json").write_bytes(data)
    fill = {f"{{{k}}}": (workdir / f"{k}.json").as_uri() for k in files} | {"{out}": (workdir / "out").as_uri()}
    before = snapshot(workdir)

    assert_clean_failure(run([*TRAINER, *[fill.get(a, a) for a in argv]], workdir), code, words)
    assert snapshot(workdir) == before and not (workdir / "out").exists()


def test_a_pickle_in_the_weight_dictionary_is_never_loaded(workdir):
    """A hostile ``weights/objects/*.safetensors`` that is really a pickle: the trainer skips it
    with a warning and trains from scratch; the pickle's code never runs and the file stays."""
    marker = workdir / "pwned"

    class Evil:
        def __reduce__(self):
            return (pathlib.Path.write_text, (marker, "ran"))

    weights = workdir / "weights"
    (weights / "objects").mkdir(parents=True)
    evil = weights / "objects" / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Evil()))
    (weights / "index.json").write_text(
        json.dumps(
            {
                "apiVersion": "epnas.io/v1alpha1",
                "kind": "WeightIndex",
                "tensors": {
                    "body.0_conv2d.op.conv.weight": [
                        {"object": "objects/evil.safetensors", "shape": [8, 3, 3, 3], "accuracy": 0.9, "child": "x"}
                    ]
                },
            }
        )
    )
    (workdir / "good.json").write_text(json.dumps(GOOD_ARCH))
    evil_bytes = evil.read_bytes()

    result = run(
        [
            *TRAINER,
            "--arch",
            (workdir / "good.json").as_uri(),
            "--out",
            (workdir / "out").as_uri(),
            "--weights",
            weights.as_uri(),
            "--dataset",
            "synthetic",
            "--epochs",
            "1",
        ],
        workdir,
    )

    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not marker.exists() and evil.read_bytes() == evil_bytes
    outcome = json.loads((workdir / "out" / "result.json").read_text())
    assert any("evil.safetensors" in w for w in outcome.get("warnings", [])), outcome.get("warnings")
