"""Every field under ``spec`` has a plain-text description for ``kubectl explain``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from controller import crd

MARKUP = ("``", ":class:", ":func:", ":mod:")


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """``(path, schema, is_property)`` of ``node`` and everything below it."""
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child, True
        yield from _walk(child, f"{path}.{name}")
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        child = node.get(key)
        if isinstance(child, dict):
            yield f"{path}{suffix}", child, False
            yield from _walk(child, f"{path}{suffix}")


def _spec_schema() -> dict[str, Any]:
    return crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_every_spec_property_has_a_plain_description() -> None:
    offenders = []
    for path, node, is_property in _walk(_spec_schema(), "spec"):
        description = node.get("description")
        if is_property and not (isinstance(description, str) and description.strip()):
            offenders.append(f"{path}: no description")
        elif isinstance(description, str):
            offenders.extend(f"{path}: description has {mark!r}" for mark in MARKUP if mark in description)
    assert offenders == [], "\n".join(offenders)


def test_the_spec_itself_is_described() -> None:
    description = _spec_schema().get("description", "")
    assert description.strip() and not any(mark in description for mark in MARKUP)


def test_the_walk_reaches_nested_properties() -> None:
    """A guard on the test itself: the walk sees properties inside objects and inside list items."""
    paths = {path for path, _, is_property in _walk(_spec_schema(), "spec") if is_property}
    assert {
        "spec.budget.topK",
        "spec.constraints[].metric",
        "spec.trainer.tolerations",
        "spec.initialArchitecture.random.depth",
    } <= paths
