"""The ``ArchitectureSearch`` document: typed, validated, with the papers' defaults.

The same model validates ``epnas search FILE.yaml`` and generates the CRD's
structural schema (``crd_openapi_schema``).  Field names are the YAML's camelCase.
Everything that is wrong is reported at once: ``load_search`` raises one
``SpecError`` whose ``problems`` name every bad field by its path in the document.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from typing import Annotated

import annotated_types
import pydantic
import yaml
from pydantic import AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from epnas.arch import Arch, parse_arch, pydantic_problems
from epnas.errors import Problem, SpecError
from epnas.space import SPACES

API_VERSION = "epnas.io/v1alpha1"
KIND = "ArchitectureSearch"
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
INT64_MAX = 2**63 - 1


def _not_a_boolean(value: Any) -> Any:
    """YAML's ``true`` is not the number 1: a boolean where a number belongs is an error."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


Int = Annotated[int, BeforeValidator(_not_a_boolean), annotated_types.Le(INT64_MAX)]
Float = Annotated[float, BeforeValidator(_not_a_boolean), AllowInfNan(False)]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40, description="DNS label; Job names append -eNNN-sNN-cNN")
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class RandomStart(_Model):
    depth: Int = Field(3, ge=1, le=32, description="layers (or cell branches) of the random starting network")


class InitialArchitecture(_Model):
    """Exactly one of a random network of a given depth or an explicit architecture."""

    random: RandomStart | None = None
    architecture: dict[str, Any] | None = Field(None, description="an architecture as epnas.arch.Arch JSON")

    @model_validator(mode="after")
    def _exactly_one(self) -> "InitialArchitecture":
        if (self.random is None) == (self.architecture is None):
            raise ValueError("set exactly one of 'random' or 'architecture'")
        return self


class Dataset(_Model):
    kind: Literal["digits", "cifar10", "npz", "synthetic"] = "digits"
    uri: str | None = Field(None, description="directory or store URI (cifar10, npz)")
    input_shape: list[Int] | None = Field(None, min_length=3, max_length=3, description="(C, H, W); required for npz")
    num_classes: Int | None = Field(None, ge=2, description="required for npz")
    options: dict[str, Any] = Field(default_factory=dict, description="kind-specific options, e.g. synthetic: {samples: 512}")

    @model_validator(mode="after")
    def _needs(self) -> "Dataset":
        if self.kind in ("cifar10", "npz") and not self.uri:
            raise ValueError(f"dataset kind {self.kind} needs 'uri'")
        if self.kind == "npz" and (self.input_shape is None or self.num_classes is None):
            raise ValueError("dataset kind npz needs 'inputShape' and 'numClasses'")
        if self.input_shape is not None and min(self.input_shape) <= 0:
            raise ValueError("inputShape entries must be positive")
        return self


class Constraint(_Model):
    """``min <= U <= max`` on one metric; violations cost ``penalty ** V`` (EPNAS Eq. 2)."""

    # the cross-field rules again as CEL rules of the CRD, so that `kubectl apply` refuses them at once
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.min) || has(self.max)", "message": "set 'min', 'max' or both"},
        {"rule": "!has(self.min) || !has(self.max) || self.min <= self.max", "message": "min must not be greater than max"},
    ]})

    metric: Literal["modelSize", "flops", "computeIntensity"]
    min: Float | None = Field(None, gt=0)
    max: Float | None = Field(None, gt=0)
    penalty: Float = Field(0.9, gt=0, lt=1, description="base penalty p_i")

    @model_validator(mode="after")
    def _bounds(self) -> "Constraint":
        if self.min is None and self.max is None:
            raise ValueError("set 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) > max ({self.max:g})")
        return self


class Budget(_Model):
    episodes: Int = Field(15, ge=1)
    steps_per_episode: Int | None = Field(None, ge=1, description="default 10 (layer spaces) or 5 (module space)")
    branches: Int = Field(8, ge=1, le=512)
    top_k: Int = Field(8, ge=1)
    max_children: Int | None = Field(
        None, ge=1, description="stop once this many children were trained (served from cache is free); checked between steps"
    )
    max_failed_children: Int | None = Field(
        None, ge=0, description="end the search Failed once more children than this failed (default: only when every child of a step failed)"
    )


class PolicySpec(_Model):
    learning_rate: Float = Field(6e-4, gt=0)
    embedding_size: Int = Field(32, ge=1, description="layer embedding and network-embedding LSTM units")
    hidden_size: Int = Field(128, ge=1, description="scale and insert LSTM units")
    scale_groups: Int = Field(4, ge=1, description="F")
    init_range: Float = Field(0.1, gt=0, description="weights ~ U(-r, r)")
    entropy_weight: Float = Field(0.0, ge=0)
    baseline_decay: Float = Field(0.9, ge=0, lt=1, description="moving-average baseline b <- d·b + (1-d)·R")


class Screening(_Model):
    """Zero-cost screening by the default epnas strategy: each child is the first feasible, new network among the policy's samples, reached in at most maxMorphs morphs. Ignored by epnas-paper and random."""

    candidates: Int = Field(32, ge=1, le=1024, description="actions sampled from the policy per branch and morph")
    max_morphs: Int = Field(4, ge=1, le=16, description="morphs one child may take to reach a feasible, new network")


class ChildTraining(_Model):
    """How children are trained; ``None`` numbers take the regime's defaults (``regime_defaults``)."""

    regime: Literal["standard", "prediction"] = "prediction"
    epochs: Int | None = Field(None, ge=1)
    batch_size: Int | None = Field(None, ge=1)
    lr: Float | None = Field(None, gt=0)
    lr_min: Float | None = Field(None, ge=0)
    momentum: Float = Field(0.9, ge=0, lt=1)
    weight_decay: Float = Field(5e-4, ge=0)
    t0: Int = Field(10, ge=1, description="SGDR first period (epochs)")
    t_mult: Int = Field(2, ge=1)
    channel_factor: Float = Field(1.0, gt=0, le=1, description="EcoNAS proxy: channels × factor")
    resolution: Int | None = Field(None, ge=1, description="EcoNAS proxy: inputs resized to this H=W")
    sample_ratio: Float = Field(1.0, gt=0, le=1, description="EcoNAS proxy: fraction of training samples")
    parameter_sharing: bool = True
    timeout_seconds: Int = Field(3600, ge=1)

    def resolved(self) -> "ChildTraining":
        """A copy with every ``None`` number replaced by the regime's default."""
        defaults = regime_defaults(self.regime)
        return self.model_copy(update={k: v for k, v in defaults.items() if getattr(self, k) is None})


class FinalTraining(ChildTraining):
    """After the search, the ``top`` best feasible children trained again from scratch (no shared
    weights), by default in the standard regime: the models to ship.  Results under ``final/``."""

    top: Int = Field(0, ge=0, le=16, description="how many of the best feasible children to train again (0: none)")
    regime: Literal["standard", "prediction"] = "standard"
    parameter_sharing: bool = Field(False, description="ignored: final models train from scratch")

    def child_training(self) -> ChildTraining:
        """The regime a final child's task carries (resolved, no sharing, no ``top``)."""
        return ChildTraining.model_validate(self.model_dump(exclude={"top"}) | {"parameter_sharing": False}).resolved()


def regime_defaults(regime: str) -> dict[str, Any]:
    """EPNAS §4.1: standard = Nesterov SGD, SGDR 0.05→0.001, batch 128, 20 epochs;
    prediction = lr 0.5, batch 1024, aggressive decay, early stop at 10 epochs."""
    if regime == "standard":
        return {"epochs": 20, "batch_size": 128, "lr": 0.05, "lr_min": 0.001}
    return {"epochs": 10, "batch_size": 1024, "lr": 0.5, "lr_min": 0.0}


class Trainer(_Model):
    """Where and how a child's Job runs in a cluster (ignored by the local executor, but for ``image``)."""

    image: str = "ghcr.io/epnas/epnas-trainer:0.1.0"
    gpu: Int = Field(1, ge=0, description="nvidia.com/gpu per child")
    cpu: str = Field("2", pattern=QUANTITY)
    memory: str = Field("8Gi", pattern=QUANTITY)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = Field(None, description="PriorityClass of the children's pods")
    image_pull_secrets: list[str] = Field(default_factory=list, description="names of Secrets to pull the trainer image with")
    service_account_name: str | None = Field(
        None, description="ServiceAccount of the children's pods (IRSA or Workload Identity for the store); default: the namespace's default"
    )
    backoff_limit: Int = Field(2, ge=0)
    active_deadline_seconds: Int = Field(
        3600, ge=1, description="seconds one attempt of a child may run, counted from its pod's start (time queued for a node does not count)"
    )
    ttl_seconds_after_finished: Int = Field(86400, ge=0)


def with_trainer_defaults(search: "ArchitectureSearch", defaults: dict[str, Any]) -> "ArchitectureSearch":
    """``search`` with its ``spec.trainer`` completed from an installation's ``defaults``
    (camelCase ``Trainer`` fields): a field the search sets wins, one it leaves out takes the default."""
    if not defaults:
        return search
    own = search.spec.trainer.model_dump(mode="json", by_alias=True, exclude_unset=True)
    trainer = Trainer.model_validate({**defaults, **own})
    return search.model_copy(update={"spec": search.spec.model_copy(update={"trainer": trainer})})


class StoreSpec(_Model):
    uri: str | None = Field(None, pattern=r"^(file|s3)://", description="file:///abs/dir or s3://bucket/prefix")
    endpoint: str | None = Field(None, pattern=r"^https?://[^\s/]+(/\S*)?$", description="S3 endpoint URL (MinIO), http:// or https://")
    secret_name: str | None = Field(None, description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    region: str | None = None
    resume_uid: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        description="in a cluster: continue the earlier search of this name and namespace whose uid this is "
        "(its data stays at <uri>/<namespace>/<name>/<uid>); without it a new object starts fresh",
    )


class SearchSpec(_Model):
    search_space: Literal["image-layer", "image-module", "kws-layer"] = "image-layer"
    strategy: Literal["epnas", "epnas-paper", "random"] = Field(
        "epnas",
        description="epnas: the policy with zero-cost screening and feasibility-first seeding (default); "
        "epnas-paper: the paper's algorithm exactly; random: uniform actions in the same loop",
    )
    seed: Int = Field(0, ge=0, description="seeds the policy, the random start and every child")
    initial_architecture: InitialArchitecture = Field(default_factory=lambda: InitialArchitecture(random=RandomStart()))
    dataset: Dataset = Field(default_factory=Dataset)
    constraints: list[Constraint] = Field(default_factory=list)
    budget: Budget = Field(default_factory=Budget)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    screening: Screening = Field(default_factory=Screening)
    child_training: ChildTraining = Field(default_factory=ChildTraining)
    final_training: FinalTraining = Field(default_factory=FinalTraining)
    trainer: Trainer = Field(default_factory=Trainer)
    store: StoreSpec = Field(default_factory=StoreSpec)
    parallelism: Int | None = Field(None, ge=1, description="children trained at once (default: all of a step, or CPU count locally)")

    @property
    def steps_per_episode(self) -> int:
        if self.budget.steps_per_episode is not None:
            return self.budget.steps_per_episode
        return 5 if self.search_space == "image-module" else 10


class ArchitectureSearch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    api_version: Literal["epnas.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["ArchitectureSearch"] = KIND
    metadata: Metadata
    spec: SearchSpec = Field(default_factory=SearchSpec)
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.metadata.name


def initial_arch(spec: SearchSpec) -> Arch | None:
    """The explicit starting architecture, validated, or ``None`` for a random start."""
    data = spec.initial_architecture.architecture
    if data is None:
        return None
    return parse_arch({"space": spec.search_space, **data})


def dataset_geometry(spec: SearchSpec) -> tuple[tuple[int, int, int], int]:
    """``(input shape, classes)`` the children see, without reading the data.

    digits → 1×8×8, 10 classes; cifar10 → 3×32×32, 10; synthetic → the space's input
    shape (or ``inputShape``) and ``numClasses`` (default 10); npz → as declared.
    ``childTraining.resolution`` (EcoNAS) replaces H and W.
    """
    return geometry_of(spec.dataset, spec.search_space, spec.child_training.resolution)


def geometry_of(ds: "Dataset", space: str, res: int | None = None) -> tuple[tuple[int, int, int], int]:
    """``dataset_geometry`` from its parts: a dataset, a search space's name, a resolution."""
    shape, classes = {
        "digits": ((1, 8, 8), 10),
        "cifar10": ((3, 32, 32), 10),
        "synthetic": (SPACES[space].input_shape, 10),
        "npz": (None, None),
    }[ds.kind]
    shape = tuple(ds.input_shape) if ds.input_shape else shape
    classes = ds.num_classes or classes
    if res is not None:
        shape = (shape[0], res, res)
    return tuple(shape), classes


MAX_DOCUMENT_BYTES = 1_572_864  # the API server's own limit on an object, 1.5 MiB
MAX_NESTING = 64


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses what a search file never needs and an attacker likes:
    aliases (a "billion laughs" document expands to gigabytes), duplicate keys (the last one
    would silently win) and nesting deeper than ``MAX_NESTING`` (a recursion bomb)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in a search file", event.start_mark)
        self._depth += 1
        if self._depth > MAX_NESTING:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_NESTING} levels", self.peek_event().start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_search(text: str | bytes, source: str = "<search>") -> ArchitectureSearch:
    """Parse YAML text (or UTF-8 bytes) into a validated ``ArchitectureSearch``.

    Refuses, each with one clear problem: more than 1.5 MiB, bytes that are not UTF-8, YAML
    aliases, duplicate keys and nesting deeper than 64.  Raises ``SpecError`` with every
    problem (YAML syntax, schema, the initial architecture's grammar), each with its path.
    """
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise SpecError.one("", f"{source}: {size:,} bytes; a search file may have at most {MAX_DOCUMENT_BYTES:,} (1.5 MiB)")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SpecError.one("", f"{source}: not UTF-8 text (byte {err.start}: {text[err.start:err.start + 1]!r})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise SpecError.one("", f"{source}: not valid YAML: {err}") from None
    except RecursionError:
        raise SpecError.one("", f"{source}: nested too deeply") from None
    return parse_search(data)


def parse_search(data: Any) -> ArchitectureSearch:
    """Validate an already-decoded document (``dict``) into an ``ArchitectureSearch``."""
    if not isinstance(data, dict):
        raise SpecError.one("", "the document must be a mapping with apiVersion, kind, metadata and spec")
    try:
        search = ArchitectureSearch.model_validate(data)
    except pydantic.ValidationError as err:
        raise SpecError(pydantic_problems(err)) from None
    try:
        initial_arch(search.spec)
    except SpecError as err:
        raise SpecError([Problem(f"spec.initialArchitecture.architecture.{p.path}", p.message) for p in err.problems]) from None
    return search


# ---------------------------------------------------------------- CRD schema

_DROP = {"title", "discriminator"}


def crd_openapi_schema() -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the CRD: the spec model's JSON schema made structural.

    ``$ref`` are inlined, ``anyOf [X, null]`` becomes ``X`` with ``nullable: true``,
    ``const`` becomes a one-value ``enum``, numeric ``exclusiveMinimum``/``Maximum`` become
    OpenAPI v3.0's ``minimum`` + ``exclusiveMinimum: true``, free-form objects keep unknown fields, and
    ``status`` is an open object the controller owns.
    """
    raw = SearchSpec.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    spec = _structural(raw, defs)
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = copy.deepcopy(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = {**copy.deepcopy(target), **node}
        return _structural(merged, defs)
    if "anyOf" in node:
        choices = node.pop("anyOf")
        options = [o for o in choices if o.get("type") != "null"]
        base = _structural(options[0], defs) if len(options) == 1 else {"x-kubernetes-preserve-unknown-fields": True}
        node = {**base, **node}
        if len(options) < len(choices):
            node["nullable"] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    # pydantic leaves a constraint on an Annotated type inside ``X | None`` as a raw ``ge``/``gt``/``le``/``lt``
    for raw, bound, exclusive in (("ge", "minimum", None), ("gt", "minimum", "exclusiveMinimum"),
                                  ("le", "maximum", None), ("lt", "maximum", "exclusiveMaximum")):
        if raw in node:
            value = node.pop(raw)
            tighter = max if bound == "minimum" else min
            if bound in node and node[bound] != value:
                value = tighter(value, node[bound])
            node[bound] = value
            if exclusive:
                node[exclusive] = True
    if node.get("type") == "integer" and node.get("maximum") == INT64_MAX:
        node.pop("maximum")  # the API server's integers are int64 already
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(node.get(exclusive), (int, float)) and not isinstance(node[exclusive], bool):
            # JSON Schema 2020 writes `exclusiveMinimum: 0`; OpenAPI v3.0 (the CRD's dialect) `minimum: 0, exclusiveMinimum: true`
            node[bound], node[exclusive] = node[exclusive], True
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {k: _structural(v, defs) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out and not isinstance(out.get("additionalProperties"), dict):
        out.pop("additionalProperties", None)
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "properties" in out and out.get("additionalProperties") is False:
        out.pop("additionalProperties")  # the API server forbids both; unknown fields are pruned instead
    if "pattern" in out and out.get("type") != "string":
        out.pop("pattern")
    if out.get("default") is None:
        out.pop("default", None)
    return out
