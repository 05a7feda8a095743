"""A hostile user's inputs, one table: search files, flags, store URIs, commands, trainer inputs
and hostile weights.  Each case asserts the exit code (2: invalid input, 1: a fault or nothing to
act on), the line that names the field or file, no traceback, and that nothing in the working
directory — a pre-existing store included — was created, changed or deleted.

Damaged stores (truncated checkpoints, garbage history, …) are the other half of the table:
tests/integration/test_damaged_state.py.  The same bounds on the real API server: the CRD's
schema and CEL rules (tests/e2e/test_controller_lifecycle.py) and ``InvalidSpec`` conditions.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import pickle
import subprocess
import sys

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((REPO / "examples" / "digits-quick.yaml").read_text())
EPNAS = [sys.executable, "-m", "epnas.cli"]
TRAINER = [sys.executable, "-m", "child_trainer"]


def search(**changes) -> bytes:
    """The embedded default with ``changes`` at ``a__b__c`` paths (``None`` deletes)."""
    doc = json.loads(json.dumps(EXAMPLE))
    doc["spec"]["store"] = {"uri": None}
    for path, value in changes.items():
        node = doc
        *parents, leaf = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return yaml.safe_dump(doc).encode()


GOOD = search()

# name → (file bytes, the words of the line naming the problem)
SEARCH_FILES = {
    "binary junk": (b"\x00\xff\xfe\x80" * 50, "not UTF-8 text"),
    "empty file": (b"", "the document must be a mapping"),
    "a list": (b"- 1\n- 2\n", "the document must be a mapping"),
    "YAML aliases (billion laughs)": (b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n", "YAML aliases"),
    "duplicate key": (GOOD.replace(b"seed: 23", b"seed: 23\n  seed: 24"), "duplicate key 'seed'"),
    "nested 20,000 deep": (b"a: " + b"[" * 20000 + b"]" * 20000 + b"\n", "nested deeper than 64 levels"),
    "over 1.5 MiB": (GOOD + b"#" + b"x" * 2_000_000 + b"\n", "a search file may have at most 1,572,864"),
    "latin-1 bytes": (GOOD.replace(b"digits-quick", "digits-qu\xefck".encode("latin-1")), "not UTF-8 text"),
    "YAML syntax": (b"spec: [\n", "not valid YAML"),
    "two documents": (GOOD + b"---\n" + GOOD, "expected a single document"),
    "wrong apiVersion": (search(apiVersion="v1"), "apiVersion: Input should be 'epnas.io/v1alpha1'"),
    "wrong kind": (search(kind="Job"), "kind: Input should be 'ArchitectureSearch'"),
    "no name": (search(metadata={}), "metadata.name: Field required"),
    "name with capitals": (search(metadata__name="Digits_Quick"), "metadata.name: String should match pattern"),
    "name of 80 characters": (search(metadata__name="a" * 80), "metadata.name: String should have at most 40 characters"),
    "unknown field": (search(spec__searchspace="x"), "spec.searchspace: Extra inputs are not permitted"),
    "episodes: true": (search(spec__budget__episodes=True), "spec.budget.episodes: must be a number, not a boolean"),
    "episodes: 0": (search(spec__budget__episodes=0), "spec.budget.episodes: Input should be greater than or equal to 1"),
    "episodes: three": (search(spec__budget__episodes="three"), "spec.budget.episodes: Input should be a valid integer"),
    "seed over int64": (search(spec__seed=2**70), "spec.seed: Input should be less than or equal to 9223372036854775807"),
    "negative seed": (search(spec__seed=-1), "spec.seed: Input should be greater than or equal to 0"),
    "10,000 branches": (search(spec__budget__branches=10000), "spec.budget.branches: Input should be less than or equal to 512"),
    "unknown metric": (search(spec__constraints=[{"metric": "latency", "max": 1}]), "spec.constraints[0].metric: Input should be"),
    "min > max": (search(spec__constraints=[{"metric": "modelSize", "min": 9, "max": 1}]), "spec.constraints[0]: min (9) > max (1)"),
    "no bound": (search(spec__constraints=[{"metric": "modelSize"}]), "spec.constraints[0]: set 'min', 'max' or both"),
    "penalty 1.5": (search(spec__constraints=[{"metric": "modelSize", "max": 1, "penalty": 1.5}]),
                    "spec.constraints[0].penalty: Input should be less than 1"),
    "lr .inf": (GOOD.replace(b"lr: 0.1", b"lr: .inf"), "spec.childTraining.lr: Input should be a finite number"),
    "lr .nan": (GOOD.replace(b"lr: 0.1", b"lr: .nan"), "spec.childTraining.lr: Input should be a finite number"),
    "negative lr": (GOOD.replace(b"lr: 0.1", b"lr: -0.1"), "spec.childTraining.lr: Input should be greater than 0"),
    "unknown dataset": (search(spec__dataset={"kind": "imagenet"}), "spec.dataset.kind: Input should be"),
    "npz without uri": (search(spec__dataset={"kind": "npz", "inputShape": [1, 8, 8], "numClasses": 2}),
                        "spec.dataset: dataset kind npz needs 'uri'"),
    "a zero in inputShape": (search(spec__dataset={"kind": "synthetic", "inputShape": [1, 0, 8], "numClasses": 2}),
                             "spec.dataset: inputShape entries must be positive"),
    "unknown search space": (search(spec__searchSpace="transformer"), "spec.searchSpace: Input should be"),
    "unknown strategy": (search(spec__strategy="bayes"), "spec.strategy: Input should be 'epnas', 'epnas-paper' or 'random'"),
    "two starting points": (search(spec__initialArchitecture={"random": {"depth": 2}, "architecture": {"layers": []}}),
                            "spec.initialArchitecture: set exactly one of 'random' or 'architecture'"),
    "unknown layer op": (search(spec__initialArchitecture={"architecture": {"space": "image-layer", "layers": [{"op": "warp", "src1": 0}]}}),
                         "spec.initialArchitecture.architecture.layers[0].op: unknown op 'warp'"),
    "depth 0": (search(spec__initialArchitecture={"random": {"depth": 0}}), "spec.initialArchitecture.random.depth"),
    "ftp endpoint": (search(spec__store={"uri": None, "endpoint": "ftp://x"}), "spec.store.endpoint: String should match pattern"),
    "http store uri": (search(spec__store={"uri": "http://x/y"}), "spec.store.uri: String should match pattern"),
    "resumeUid not a uid": (search(spec__store={"uri": None, "resumeUid": "nope"}), "spec.store.resumeUid: String should match pattern"),
    "parallelism 0": (search(spec__parallelism=0), "spec.parallelism: Input should be greater than or equal to 1"),
    "final training of 17": (search(spec__finalTraining={"top": 17}), "spec.finalTraining.top: Input should be less than or equal to 16"),
    "0 epochs": (search(spec__childTraining={"epochs": 0}), "spec.childTraining.epochs: Input should be greater than or equal to 1"),
    "cpu: lots": (search(spec__trainer={"cpu": "lots"}), "spec.trainer.cpu: String should match pattern"),
}

# name → (argv after `epnas`, exit code, words); {file} is a good search file, {store} a pre-existing store
COMMANDS = {
    "--store s3://": (["search", "{file}", "--store", "s3://"], 2, "s3://: no bucket in the URI"),
    "--store file://": (["search", "{file}", "--store", "file://"], 2, "file URIs must be file:///absolute/dir"),
    "--store file:///": (["search", "{file}", "--store", "file:///"], 2, "file URIs must be file:///absolute/dir"),
    "--store ''": (["search", "{file}", "--store", ""], 2, "the store URI is empty"),
    "--store with a bad bucket": (["search", "{file}", "--store", "s3://Bad_Bucket/x"], 2, "'Bad_Bucket' is not an S3 bucket name"),
    "--store gs://": (["search", "{file}", "--store", "gs://b/x"], 2, "unsupported store scheme 'gs'"),
    "--store file://relative": (["search", "{file}", "--store", "file://rel/dir"], 2, "file URIs must be file:///absolute/dir"),
    "a trainer command that does not exist": (["search", "{file}", "--store", "{new}", "--trainer-command", "nonexistent-binary-xyz"], 2,
                                              "'nonexistent-binary-xyz' is not an executable program"),
    "a trainer command with an open quote": (["search", "{file}", "--store", "{new}", "--trainer-command", 'python "unclosed'], 2,
                                             "No closing quotation"),
    "a search file that does not exist": (["search", "/nonexistent/search.yaml"], 2, "cannot read /nonexistent/search.yaml"),
    "a directory as the search file": (["validate", "/"], 2, "File '/' is a directory"),
    "an unknown flag": (["search", "{file}", "--nope"], 2, "No such option '--nope'"),
    "--parallelism 0": (["search", "{file}", "--parallelism", "0"], 2, "Invalid value for '--parallelism'"),
    "status of nothing": (["status", "/nonexistent/dir"], 1, "no search state under file:///nonexistent/dir"),
    "status of a binary file": (["status", sys.executable], 2, "not UTF-8 text"),
    "export of nothing": (["export", "/nonexistent", "--out", "{new}"], 1, "no search history under file:///nonexistent"),
    "report of nothing": (["report", "/nonexistent", "--out", "{new}"], 1, "no search history under file:///nonexistent"),
    "status of an empty store": (["status", "{empty}"], 1, "no search state under"),
    "export of an empty store": (["export", "{empty}", "--out", "{new}"], 1, "no search history under"),
    "validate of a store": (["validate", "{store}/search.yaml"], 2, "not a valid ArchitectureSearch"),
}

# name → (trainer argv, exit code, words); {good} is a valid arch.json, {dir} a scratch directory
TRAINER_INPUTS = {
    "arch.json missing": (["--arch", "file:///nonexistent/arch.json", "--out", "{out}"], 2, "arch.json not found"),
    "arch.json binary junk": (["--arch", "{junk}", "--out", "{out}"], 2, "not valid JSON"),
    "arch.json truncated": (["--arch", "{trunc}", "--out", "{out}"], 2, "not valid JSON"),
    "arch.json not an architecture": (["--arch", "{notarch}", "--out", "{out}"], 2, "layers: Extra inputs are not permitted"),
    "--weights names a file": (["--arch", "{good}", "--out", "{out}", "--weights", "{junk}"], 2, "is a file; it names the weight dictionary"),
    "--endpoint not a URL": (["--arch", "{good}", "--out", "s3://bucket/x", "--endpoint", "notaurl"], 2, "is not an http:// or https:// URL"),
    "--device tpu": (["--arch", "{good}", "--out", "{out}", "--device", "tpu"], 2, "invalid choice: 'tpu'"),
    "--out with another scheme": (["--arch", "{good}", "--out", "gs://b/x"], 2, "--out must be file://, s3:// or a path"),
    "--epochs 0": (["--arch", "{good}", "--out", "{out}", "--epochs", "0"], 2, "epochs"),
}

GOOD_ARCH = {"space": "image-layer", "layers": [{"op": "conv2d", "src1": 0, "channels": 8, "width": 3, "activation": "relu"}]}


def snapshot(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


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
    fill = {"{file}": str(workdir / "search.yaml"), "{store}": str(workdir / "store"), "{empty}": str(workdir / "empty"),
            "{new}": (workdir / "new").as_uri()}
    argv = [fill.get(a, a.replace("{store}", str(workdir / "store"))) for a in argv]
    before = snapshot(workdir)

    assert_clean_failure(run([*EPNAS, *argv], workdir), code, words)
    assert snapshot(workdir) == before
    assert not (workdir / "new").exists() and not (workdir / "runs").exists() and not list(workdir.glob("s3:*"))


@pytest.mark.parametrize("name", list(TRAINER_INPUTS))
def test_bad_trainer_input_exits_2_and_writes_no_result(workdir, name):
    argv, code, words = TRAINER_INPUTS[name]
    files = {"junk": b"\x00\xff junk", "trunc": b"[1,2", "notarch": b'{"layers": 3}', "good": json.dumps(GOOD_ARCH).encode()}
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
    (weights / "index.json").write_text(json.dumps({"apiVersion": "epnas.io/v1alpha1", "kind": "WeightIndex", "tensors": {
        "body.0_conv2d.op.conv.weight": [{"object": "objects/evil.safetensors", "shape": [8, 3, 3, 3], "accuracy": 0.9, "child": "x"}]}}))
    (workdir / "good.json").write_text(json.dumps(GOOD_ARCH))
    evil_bytes = evil.read_bytes()

    result = run([*TRAINER, "--arch", (workdir / "good.json").as_uri(), "--out", (workdir / "out").as_uri(),
                  "--weights", weights.as_uri(), "--dataset", "synthetic", "--epochs", "1"], workdir)

    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not marker.exists() and evil.read_bytes() == evil_bytes
    outcome = json.loads((workdir / "out" / "result.json").read_text())
    assert any("evil.safetensors" in w for w in outcome.get("warnings", [])), outcome.get("warnings")
