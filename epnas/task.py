"""The child-task document (``children/<child>/arch.json``) and the child result (``result.json``).

The search loop writes a ``ChildTask`` before a child starts; the trainer reads it,
and writes a ``ChildResult`` last, so the result's presence means the child is done.
Both validate into typed models; anything wrong raises ``SpecError`` naming the field.
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from epnas.arch import Arch, parse_arch, pydantic_problems
from epnas.errors import Problem, SpecError
from epnas.spec import API_VERSION, ChildTraining, Dataset

TASK_KIND: Final = "ChildTask"
RESULT_KIND: Final = "ChildResult"
CHILD_ID = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Doc(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ChildTask(_Doc):
    """One child to train: its architecture, data, regime, seed and where shared weights live.

    ``weights`` is the store-relative prefix of the shared dictionary (``"weights/"``,
    relative to the search root, the parent of ``children/``); ``None`` disables
    parameter sharing for this child.  ``parent`` is the child id it was morphed from.
    """

    api_version: Literal["epnas.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["ChildTask"] = TASK_KIND
    search: str = Field(min_length=1)
    child: str = Field(pattern=CHILD_ID, max_length=63)
    arch: Arch
    dataset: Dataset = Field(default_factory=Dataset)
    training: ChildTraining = Field(default_factory=ChildTraining)
    seed: int = 0
    weights: str | None = None
    parent: str | None = None
    out_dir: str | None = Field(
        None, description="the child's directory relative to the search root (default children/<child>)"
    )

    def to_json(self) -> str:
        """The document as the loop writes it (camelCase, arch in canonical form)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        data["arch"] = json.loads(self.arch.to_json())
        return json.dumps(data, sort_keys=True, indent=2)


class ChildResult(_Doc):
    """What a trained child reports; ``history`` holds one list per series, one entry per epoch."""

    api_version: Literal["epnas.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["ChildResult"] = RESULT_KIND
    child: str
    arch_hash: str
    val_accuracy: float = Field(ge=0, le=1)
    test_accuracy: float = Field(ge=0, le=1)
    history: dict[str, list[float]] = Field(
        default_factory=dict, description="train_loss, train_acc, val_loss, val_acc, lr"
    )
    metrics: dict[str, Any] = Field(default_factory=dict)
    train_seconds: float = Field(ge=0)
    epochs_run: int = Field(ge=0)
    inherited_fraction: float = Field(0.0, ge=0, le=1)
    device: str = "cpu"
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="the arithmetic training ran in (childTraining.precision resolved)"
    )
    channels_last: bool = Field(False, description="convolutions ran in channels_last memory format")
    compiled: bool = Field(
        False, description="the model ran through torch.compile (false also when compiling failed and it fell back)"
    )
    warnings: list[str] = Field(default_factory=list)
    weights_key: str | None = Field(
        None, description="children/<child>/weights.safetensors, relative to the search root"
    )
    weights_uri: str | None = Field(None, description="full URI of the pushed weights")
    cached_from: str | None = Field(None, description="set by the loop: the child whose training this result repeats")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True, indent=2)


def _decode(data: Any, what: str) -> dict:
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SpecError.one("", f"{what} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise SpecError.one("", f"{what} must be a JSON object")
    return data


def load_task(data: Any) -> ChildTask:
    """Validate a child task from JSON text, bytes or a dict.

    Raises ``SpecError`` with every problem; an architecture problem's path starts
    with ``arch.`` (``arch.layers[2].op: unknown op 'conv9'``).
    """
    data = dict(_decode(data, "the child task"))
    problems: list[Problem] = []
    arch: Arch | None = None
    if "arch" not in data:
        problems.append(Problem("arch", "required"))
    else:
        try:
            arch = parse_arch(data["arch"])
        except SpecError as err:
            problems += [Problem(f"arch.{p.path}" if p.path else "arch", p.message) for p in err.problems]
    placeholder = {"space": "image-layer", "layers": [{"op": "add", "src1": 0}]}
    task = None
    try:
        task = ChildTask.model_validate({**data, "arch": arch if arch is not None else placeholder})
    except pydantic.ValidationError as err:
        problems += [p for p in pydantic_problems(err) if not p.path.startswith("arch")]
    if problems:
        raise SpecError(problems)
    assert task is not None  # a task that does not validate added its problems
    return task


def load_result(data: Any) -> ChildResult:
    """Validate a child result from JSON text, bytes or a dict; ``SpecError`` on anything wrong."""
    data = _decode(data, "the child result")
    try:
        return ChildResult.model_validate(data)
    except pydantic.ValidationError as err:
        raise SpecError(pydantic_problems(err)) from None
