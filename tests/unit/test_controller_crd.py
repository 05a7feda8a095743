"""manifests/crd.yaml is exactly what ``python -m controller.crd`` generates."""

from __future__ import annotations

import pathlib

import yaml

from controller import crd

MANIFEST = pathlib.Path(__file__).resolve().parents[2] / "manifests" / "crd.yaml"


def test_manifest_matches_generation() -> None:
    assert MANIFEST.read_text() == crd.render(), "regenerate with: python -m controller.crd > manifests/crd.yaml"


def test_names_subresource_and_columns() -> None:
    doc = yaml.safe_load(crd.render())
    assert doc["metadata"]["name"] == "architecturesearches.epnas.io"
    names = doc["spec"]["names"]
    assert names["kind"] == "ArchitectureSearch" and names["shortNames"] == ["archsearch", "nas"]
    (version,) = doc["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {"Phase": ".status.phase", "Episode": ".status.episode", "Step": ".status.step",
                       "Best-Acc": ".status.bestAccuracy", "Feasible": ".status.feasibleCount",
                       "Age": ".metadata.creationTimestamp"}
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["policy"]["properties"]["learningRate"] == {
        **spec["properties"]["policy"]["properties"]["learningRate"], "minimum": 0, "exclusiveMinimum": True}
