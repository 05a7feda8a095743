"""manifests/crd.yaml is exactly what ``python -m controller.crd`` generates."""

from __future__ import annotations

import pathlib

import yaml

from controller import crd

MANIFEST = pathlib.Path(__file__).resolve().parents[3] / "manifests" / "crd.yaml"


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
    assert columns == {
        "Phase": ".status.phase",
        "Children": ".status.progress",
        "Best-Acc": ".status.bestFeasibleAccuracy",
        "Feasible": ".status.feasibleCount",
        "Reason": ".status.reason",
        "Age": ".metadata.creationTimestamp",
        "Position": ".status.position",
        "Final-Acc": ".status.finalModel.valAccuracy",
        "Final-Model": ".status.finalModel.uri",
    }
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["policy"]["properties"]["learningRate"] == {
        **spec["properties"]["policy"]["properties"]["learningRate"],
        "minimum": 0,
        "exclusiveMinimum": True,
    }


# The keywords of apiextensions.k8s.io/v1 JSONSchemaProps; the API server refuses any other.
OPENAPI_KEYWORDS = {
    "type",
    "format",
    "title",
    "description",
    "default",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "enum",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "properties",
    "additionalProperties",
    "nullable",
    "example",
    "externalDocs",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-validations",
}


def _schemas(node: dict, path: str = "spec"):
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _schemas(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _schemas(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schemas(node["additionalProperties"], f"{path}{{}}")


def test_every_schema_keyword_is_one_the_api_server_knows() -> None:
    spec = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    unknown = {f"{path}: {key}" for path, node in _schemas(spec) for key in node if key not in OPENAPI_KEYWORDS}
    assert not unknown, sorted(unknown)


def test_bounds_of_optional_fields_reach_the_crd() -> None:
    """``Int | None = Field(None, ge=1)`` keeps its bound (pydantic writes it as a raw ``ge``)."""
    spec = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    budget = spec["budget"]["properties"]
    assert budget["maxChildren"]["minimum"] == 1 and budget["maxChildren"]["nullable"] is True
    assert budget["branches"]["maximum"] == 512 and budget["branches"]["minimum"] == 1
    assert spec["childTraining"]["properties"]["lr"] == {
        **spec["childTraining"]["properties"]["lr"],
        "minimum": 0,
        "exclusiveMinimum": True,
    }
