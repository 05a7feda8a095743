"""The search-file half of the bad-input table, shared by the local path
(tests/integration/test_bad_inputs.py: ``epnas search`` exits 2 naming the field) and the
cluster (tests/e2e/test_bad_searches.py: each case that is a custom resource is refused by
the CRD or ends ``Failed`` naming the field)."""

from __future__ import annotations

import json
import pathlib

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = yaml.safe_load((REPO / "examples" / "digits-quick.yaml").read_text())


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
    "YAML aliases (billion laughs)": (
        b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n",
        "YAML aliases",
    ),
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
    "name of 80 characters": (
        search(metadata__name="a" * 80),
        "metadata.name: String should have at most 40 characters",
    ),
    "unknown field": (search(spec__searchspace="x"), "spec.searchspace: Extra inputs are not permitted"),
    "episodes: true": (search(spec__budget__episodes=True), "spec.budget.episodes: must be a number, not a boolean"),
    "episodes: 0": (
        search(spec__budget__episodes=0),
        "spec.budget.episodes: Input should be greater than or equal to 1",
    ),
    "episodes: three": (
        search(spec__budget__episodes="three"),
        "spec.budget.episodes: Input should be a valid integer",
    ),
    "seed over int64": (
        search(spec__seed=2**70),
        "spec.seed: Input should be less than or equal to 9223372036854775807",
    ),
    "negative seed": (search(spec__seed=-1), "spec.seed: Input should be greater than or equal to 0"),
    "10,000 branches": (
        search(spec__budget__branches=10000),
        "spec.budget.branches: Input should be less than or equal to 512",
    ),
    "unknown metric": (
        search(spec__constraints=[{"metric": "latency", "max": 1}]),
        "spec.constraints[0].metric: Input should be",
    ),
    "min > max": (
        search(spec__constraints=[{"metric": "modelSize", "min": 9, "max": 1}]),
        "spec.constraints[0]: min (9) > max (1)",
    ),
    "no bound": (search(spec__constraints=[{"metric": "modelSize"}]), "spec.constraints[0]: set 'min', 'max' or both"),
    "penalty 1.5": (
        search(spec__constraints=[{"metric": "modelSize", "max": 1, "penalty": 1.5}]),
        "spec.constraints[0].penalty: Input should be less than 1",
    ),
    "lr .inf": (GOOD.replace(b"lr: 0.1", b"lr: .inf"), "spec.childTraining.lr: Input should be a finite number"),
    "lr .nan": (GOOD.replace(b"lr: 0.1", b"lr: .nan"), "spec.childTraining.lr: Input should be a finite number"),
    "negative lr": (GOOD.replace(b"lr: 0.1", b"lr: -0.1"), "spec.childTraining.lr: Input should be greater than 0"),
    "unknown dataset": (search(spec__dataset={"kind": "imagenet"}), "spec.dataset.kind: Input should be"),
    "npz without uri": (
        search(spec__dataset={"kind": "npz", "inputShape": [1, 8, 8], "numClasses": 2}),
        "spec.dataset: dataset kind npz needs 'uri'",
    ),
    "a zero in inputShape": (
        search(spec__dataset={"kind": "synthetic", "inputShape": [1, 0, 8], "numClasses": 2}),
        "spec.dataset: inputShape entries must be positive",
    ),
    "unknown search space": (search(spec__searchSpace="transformer"), "spec.searchSpace: Input should be"),
    "unknown strategy": (
        search(spec__strategy="bayes"),
        "spec.strategy: Input should be 'epnas', 'epnas-paper' or 'random'",
    ),
    "two starting points": (
        search(spec__initialArchitecture={"random": {"depth": 2}, "architecture": {"layers": []}}),
        "spec.initialArchitecture: set exactly one of 'random' or 'architecture'",
    ),
    "unknown layer op": (
        search(
            spec__initialArchitecture={"architecture": {"space": "image-layer", "layers": [{"op": "warp", "src1": 0}]}}
        ),
        "spec.initialArchitecture.architecture.layers[0].op: unknown op 'warp'",
    ),
    "depth 0": (search(spec__initialArchitecture={"random": {"depth": 0}}), "spec.initialArchitecture.random.depth"),
    "ftp endpoint": (
        search(spec__store={"uri": None, "endpoint": "ftp://x"}),
        "spec.store.endpoint: String should match pattern",
    ),
    "http store uri": (search(spec__store={"uri": "http://x/y"}), "spec.store.uri: String should match pattern"),
    "resumeUid not a uid": (
        search(spec__store={"uri": None, "resumeUid": "nope"}),
        "spec.store.resumeUid: String should match pattern",
    ),
    "parallelism 0": (search(spec__parallelism=0), "spec.parallelism: Input should be greater than or equal to 1"),
    "final training of 17": (
        search(spec__finalTraining={"top": 17}),
        "spec.finalTraining.top: Input should be less than or equal to 16",
    ),
    "0 epochs": (
        search(spec__childTraining={"epochs": 0}),
        "spec.childTraining.epochs: Input should be greater than or equal to 1",
    ),
    "cpu: lots": (search(spec__trainer={"cpu": "lots"}), "spec.trainer.cpu: String should match pattern"),
}
