"""Which changes a search may take after it started: the rule for pinning ``search.yaml``.

A search's spec is written once to ``<store>/<name>/search.yaml``.  Running the same name
again with a different spec is either an *extension* — only fields in ``EXTENDABLE`` (or under
``EXTENDABLE_SECTIONS``) differ,
and ``budget.episodes`` did not shrink — and the search continues from its checkpoint under
the new budget, or it is refused with every differing field named by its path
(``spec.constraints[0].max``).  Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

EXTENDABLE = frozenset(
    {"spec.budget.episodes", "spec.budget.maxChildren", "spec.budget.maxFailedChildren", "spec.parallelism"}
)
EXTENDABLE_SECTIONS = ("spec.finalTraining.", "spec.trainer.")
"""Every field under these may change: final training runs after the search and changes nothing
in it; the trainer section says where and with what a child's Job runs (image, resources,
placement, retries), not what it computes."""


def extendable(field: str) -> bool:
    """``field`` may change: listed, under an extendable section, or the whole section (absent from an older search.yaml)."""
    return field in EXTENDABLE or field.startswith(EXTENDABLE_SECTIONS) or f"{field}." in EXTENDABLE_SECTIONS


def differing_fields(old: Any, new: Any, path: str = "") -> list[str]:
    """Every leaf path where ``old`` and ``new`` (decoded JSON) differ, sorted."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += differing_fields(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [p for i, (a, b) in enumerate(zip(old, new)) for p in differing_fields(a, b, f"{path}[{i}]")]
    return [] if old == new else [path]


def spec_changes(stored: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(extensions, refused)``: the differing fields of two resolved search documents
    (``{"spec": …, "metadata": …}``), split by the rule in the module docstring.  Metadata
    other than the name is not part of the search and is ignored."""
    fields = differing_fields(
        {"name": stored["metadata"]["name"], "spec": stored["spec"]},
        {"name": new["metadata"]["name"], "spec": new["spec"]},
    )
    old_episodes = (stored["spec"].get("budget") or {}).get("episodes")
    new_episodes = (new["spec"].get("budget") or {}).get("episodes")
    shrunk = (
        "spec.budget.episodes" in fields
        and old_episodes is not None
        and new_episodes is not None
        and new_episodes < old_episodes
    )
    refused = [f for f in fields if not extendable(f)]
    if shrunk:
        refused.append(f"spec.budget.episodes (cannot shrink from {old_episodes} to {new_episodes})")
    extensions = [f for f in fields if extendable(f) and not (shrunk and f == "spec.budget.episodes")]
    return extensions, sorted(refused)
