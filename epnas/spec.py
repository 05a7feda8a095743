"""The ``ArchitectureSearch`` document: typed, validated, with the papers' defaults.

The same model validates ``epnas search FILE.yaml`` and generates the CRD's
structural schema (``crd_openapi_schema``).  Field names are the YAML's camelCase.
Everything that is wrong is reported at once: ``load_search`` raises one
``SpecError`` whose ``problems`` name every bad field by its path in the document.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Final, Literal

import annotated_types
import pydantic
import yaml
from pydantic import AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from epnas.arch import Arch, parse_arch, pydantic_problems
from epnas.errors import Problem, SpecError
from epnas.ops import Shape, as_shape
from epnas.space import SPACES

API_VERSION: Final = "epnas.io/v1alpha1"
KIND: Final = "ArchitectureSearch"
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

    name: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=40,
        description="DNS label; Job names append -eNNN-sNN-cNN",
    )
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class RandomStart(_Model):
    """A random starting network drawn from the search space's value tables."""

    depth: Int = Field(
        3,
        ge=1,
        le=32,
        description="Layers (cell branches, for image-module) of the random starting network, capped at what the space allows; "
        "1 to 32. Default 3.",
    )


class InitialArchitecture(_Model):
    """The network every branch starts from: exactly one of a random network of a given depth or an explicit architecture."""

    random: RandomStart | None = Field(
        None,
        description="Start from a random network of the given depth, seeded by spec.seed. Set either random or architecture, not both.",
    )
    architecture: dict[str, Any] | None = Field(
        None,
        description="Start from this architecture, in epnas's architecture JSON: layers for image-layer and kws-layer, "
        "cell and stack for image-module (space defaults to spec.searchSpace). Set either random or architecture, not both.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> InitialArchitecture:
        if (self.random is None) == (self.architecture is None):
            raise ValueError("set exactly one of 'random' or 'architecture'")
        return self


class Dataset(_Model):
    """The data children are trained, validated and tested on. Nothing is ever downloaded."""

    kind: Literal["digits", "cifar10", "npz", "synthetic"] = Field(
        "digits",
        description="The dataset: digits (scikit-learn's 8x8 digits, built in), cifar10 (CIFAR-10 python batches at uri), "
        "npz (arrays x_train, y_train, x_val, y_val and optionally x_test, y_test in the .npz file at uri) or "
        "synthetic (seeded class templates plus noise). Default digits.",
    )
    uri: str | None = Field(
        None,
        description="Where the data is, as a path, file:// or s3:// URI: the directory of data_batch_1..5 and test_batch (cifar10) "
        "or the .npz file (npz). Required for cifar10 and npz, ignored otherwise.",
    )
    input_shape: list[Int] | None = Field(
        None,
        min_length=3,
        max_length=3,
        description="Shape of one input sample as [C, H, W], each positive. Required for npz; for synthetic the shape generated "
        "(default: the search space's input shape); for other kinds it must match the data.",
    )
    num_classes: Int | None = Field(
        None,
        ge=2,
        description="Number of classes, at least 2. Required for npz; for synthetic the classes generated (default 10).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Kind-specific options. synthetic takes samples (default 512), noise (1.0), seed and shift "
        "(0: each sample rolled along H by up to this many pixels). Default: none.",
    )

    @model_validator(mode="after")
    def _needs(self) -> Dataset:
        if self.kind in ("cifar10", "npz") and not self.uri:
            raise ValueError(f"dataset kind {self.kind} needs 'uri'")
        if self.kind == "npz" and (self.input_shape is None or self.num_classes is None):
            raise ValueError("dataset kind npz needs 'inputShape' and 'numClasses'")
        if self.input_shape is not None and min(self.input_shape) <= 0:
            raise ValueError("inputShape entries must be positive")
        return self


class Constraint(_Model):
    """A bound min <= U <= max on one resource metric U of a child, computed analytically from its architecture.
    A violation multiplies the child's reward by penalty to the power V, the relative violation (EPNAS Eq. 2)."""

    # the cross-field rules again as CEL rules of the CRD, so that `kubectl apply` refuses them at once
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.min) || has(self.max)", "message": "set 'min', 'max' or both"},
                {
                    "rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
                    "message": "min must not be greater than max",
                },
            ]
        }
    )

    metric: Literal["modelSize", "flops", "computeIntensity"] = Field(
        description="The metric bounded: modelSize (trainable parameters), flops (floating-point operations of one inference "
        "at batch 1, a multiply-add counting 2) or computeIntensity (FLOPs per byte moved, float32). Required."
    )
    min: Float | None = Field(
        None,
        gt=0,
        description="Lower bound on the metric, greater than 0. Set min, max or both; min must not exceed max.",
    )
    max: Float | None = Field(
        None,
        gt=0,
        description="Upper bound on the metric, greater than 0. Set min, max or both; max must not be below min.",
    )
    penalty: Float = Field(
        0.9,
        gt=0,
        lt=1,
        description="Base p of the penalty p^V that multiplies a violating child's reward; the smaller, the harsher. "
        "Between 0 and 1, exclusive. Default 0.9.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Constraint:
        if self.min is None and self.max is None:
            raise ValueError("set 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) > max ({self.max:g})")
        return self


class Budget(_Model):
    """How much to search: episodes times steps per episode times branches children, unless stopped earlier."""

    episodes: Int = Field(
        15,
        ge=1,
        description="Number of episodes; after each the policy learns and the best networks seed the next. At least 1. Default 15. "
        "Raising it on a finished search continues the search.",
    )
    steps_per_episode: Int | None = Field(
        None,
        ge=1,
        description="Morphing steps per episode; each step trains one child per branch. At least 1. "
        "Default when unset: 10 for image-layer and kws-layer, 5 for image-module.",
    )
    branches: Int = Field(
        8,
        ge=1,
        le=512,
        description="Children trained per step, each morphing the network of its own branch; 1 to 512. Default 8.",
    )
    top_k: Int = Field(
        8,
        ge=1,
        description="How many of the best networks seed the next episode; the branches start from them in turn. At least 1. Default 8.",
    )
    max_children: Int | None = Field(
        None,
        ge=1,
        description="Stop the search once this many children were trained (children served from cache are free); "
        "checked between steps. At least 1. Default: no limit.",
    )
    max_failed_children: Int | None = Field(
        None,
        ge=0,
        description="End the search Failed once more children than this failed. At least 0. "
        "Default: only when every child of a step failed.",
    )


class PolicySpec(_Model):
    """The LSTM policy that samples morphing actions, and its REINFORCE training (EPNAS section 4.1 defaults).
    Used by the epnas and epnas-paper strategies; ignored by random."""

    learning_rate: Float = Field(
        6e-4,
        gt=0,
        description="Adam learning rate of the policy's update after each episode; greater than 0. Default 0.0006.",
    )
    embedding_size: Int = Field(
        32,
        ge=1,
        description="Size of the layer embeddings and units of the LSTM that embeds a network; at least 1. Default 32.",
    )
    hidden_size: Int = Field(
        128, ge=1, description="Units of the scale and insert decoder LSTM cells; at least 1. Default 128."
    )
    scale_groups: Int = Field(
        4,
        ge=1,
        description="F: the layers (or cell branches) are split into this many contiguous groups, and the scale action "
        "picks a channel and a width direction per group. At least 1. Default 4.",
    )
    init_range: Float = Field(
        0.1,
        gt=0,
        description="Every policy parameter is initialised uniformly in [-initRange, initRange]; greater than 0. Default 0.1.",
    )
    entropy_weight: Float = Field(
        0.0,
        ge=0,
        description="Weight of the entropy bonus in the policy's loss, which keeps it exploring; 0 turns it off. Default 0.",
    )
    baseline_decay: Float = Field(
        0.9,
        ge=0,
        lt=1,
        description="Decay d of the moving-average reward baseline, b = d*b + (1-d)*R; at least 0 and below 1. Default 0.9.",
    )


class Screening(_Model):
    """Zero-cost screening by the default epnas strategy: each child is the first feasible, new network among the policy's samples, reached in at most maxMorphs morphs. Ignored by epnas-paper and random."""

    candidates: Int = Field(
        32, ge=1, le=1024, description="Actions sampled from the policy per branch and morph; 1 to 1024. Default 32."
    )
    max_morphs: Int = Field(
        4,
        ge=1,
        le=16,
        description="Morphs one child may take to reach a feasible network not trained before; 1 to 16. Default 4.",
    )


class ChildTraining(_Model):
    """How children are trained during the search. Numbers left unset take the regime's defaults."""

    regime: Literal["standard", "prediction"] = Field(
        "prediction",
        description="prediction: a short performance-prediction run (10 epochs, batch 1024, lr 0.5 decayed by a cosine to 0 "
        "after a warm-up); standard: SGD with warm restarts (20 epochs, batch 128, lr 0.05 to 0.001). Default prediction.",
    )
    epochs: Int | None = Field(
        None, ge=1, description="Epochs of training; at least 1. Default when unset: 20 (standard) or 10 (prediction)."
    )
    batch_size: Int | None = Field(
        None,
        ge=1,
        description="Training batch size; at least 1. Default when unset: 128 (standard) or 1024 (prediction).",
    )
    lr: Float | None = Field(
        None,
        gt=0,
        description="Peak SGD learning rate; greater than 0. Default when unset: 0.05 (standard) or 0.5 (prediction).",
    )
    lr_min: Float | None = Field(
        None,
        ge=0,
        description="Learning rate the cosine schedule decays to; at least 0. Default when unset: 0.001 (standard) or 0 (prediction).",
    )
    momentum: Float = Field(
        0.9, ge=0, lt=1, description="SGD momentum, Nesterov when above 0; at least 0 and below 1. Default 0.9."
    )
    weight_decay: Float = Field(5e-4, ge=0, description="SGD weight decay (L2); at least 0. Default 0.0005.")
    t0: Int = Field(
        10,
        ge=1,
        description="Length in epochs of the first period of SGDR, the standard regime's schedule; at least 1. Default 10.",
    )
    t_mult: Int = Field(
        2,
        ge=1,
        description="Factor by which each SGDR period is longer than the one before (standard regime); at least 1. Default 2.",
    )
    channel_factor: Float = Field(
        1.0,
        gt=0,
        le=1,
        description="EcoNAS proxy: every channel count is multiplied by this factor (rounded, at least 1) for training; "
        "above 0 and at most 1. Default 1 (off).",
    )
    resolution: Int | None = Field(
        None,
        ge=1,
        description="EcoNAS proxy: inputs are resized to this height and width, in pixels; at least 1. Default: the data's own size.",
    )
    sample_ratio: Float = Field(
        1.0,
        gt=0,
        le=1,
        description="EcoNAS proxy: fraction of the training samples used, a seeded subset; above 0 and at most 1. Default 1 (all).",
    )
    parameter_sharing: bool = Field(
        True,
        description="Whether children start from the search's shared weight dictionary (keyed by layer index and op type) "
        "and add their trained weights to it. Default true.",
    )
    timeout_seconds: Int = Field(
        3600,
        ge=1,
        description="Seconds one child may train: training stops after the epoch that passes it and the child is scored as it is; "
        "on one machine a child still running after this long is killed as a failed attempt. At least 1. Default 3600.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Arithmetic of training and evaluation: fp32; bf16 (mixed precision, bfloat16 autocast); fp16 (mixed precision, "
        "float16 autocast with a gradient scaler); auto: bf16 on a CUDA GPU that supports it, fp16 on other CUDA GPUs and fp32 "
        "on CPU, where training stays bit-for-bit reproducible. bf16 asked for on a GPU without it trains in fp16. Default auto.",
    )
    compile: bool = Field(
        False,
        description="Whether the child's network is compiled with torch.compile before training; when compiling fails the child "
        "trains without it and its result carries a warning. Pays off on GPUs for long runs. Default false.",
    )

    def resolved(self) -> ChildTraining:
        """A copy with every ``None`` number replaced by the regime's default."""
        defaults = regime_defaults(self.regime)
        return self.model_copy(update={k: v for k, v in defaults.items() if getattr(self, k) is None})


class FinalTraining(ChildTraining):
    """After the search, the top best feasible children trained again from scratch (no shared weights),
    by default in the standard regime: the models to ship. Results go under final/ in the store."""

    top: Int = Field(
        0,
        ge=0,
        le=16,
        description="How many of the best feasible children to train again after the search; 0 to 16. Default 0 (none).",
    )
    regime: Literal["standard", "prediction"] = Field(
        "standard",
        description="standard: SGD with warm restarts (20 epochs, batch 128, lr 0.05 to 0.001); prediction: a short "
        "performance-prediction run (10 epochs, batch 1024, lr 0.5 decayed by a cosine to 0). Default standard.",
    )
    parameter_sharing: bool = Field(
        False, description="Ignored: final models always train from scratch, without shared weights. Default false."
    )

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
    """Where and how each child's Kubernetes Job runs in a cluster; ignored when epnas search runs on one machine.
    A field left unset takes the installation's trainer default (the chart's trainer values), else the default named here."""

    image: str = Field(
        "ghcr.io/epnas/epnas-trainer:0.1.0",
        description="Container image that trains a child. Default ghcr.io/epnas/epnas-trainer:0.1.0.",
    )
    gpu: Int = Field(
        1, ge=0, description="NVIDIA GPUs (nvidia.com/gpu) requested per child; 0 trains on CPU. Default 1."
    )
    cpu: str = Field(
        "2",
        pattern=QUANTITY,
        description="CPU request of a child's pod, as a Kubernetes quantity such as 2 or 500m. Default 2.",
    )
    memory: str = Field(
        "8Gi",
        pattern=QUANTITY,
        description="Memory request and limit of a child's pod, as a Kubernetes quantity such as 8Gi. Default 8Gi.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels a child's pod must match, as a pod's nodeSelector. Default: none.",
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Tolerations of the children's pods, as in a pod spec, e.g. for a tainted GPU node pool. Default: none.",
    )
    affinity: dict[str, Any] | None = Field(
        None,
        description="Affinity of the children's pods, as in a pod spec (nodeAffinity, podAffinity, podAntiAffinity). Default: none.",
    )
    priority_class_name: str | None = Field(None, description="PriorityClass of the children's pods. Default: none.")
    image_pull_secrets: list[str] = Field(
        default_factory=list,
        description="Names of Secrets in the search's namespace to pull the trainer image with. Default: none.",
    )
    service_account_name: str | None = Field(
        None,
        description="ServiceAccount of the children's pods, e.g. one with IRSA or Workload Identity access to the store. "
        "Default: the namespace's default ServiceAccount.",
    )
    queue_name: str | None = Field(
        None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Kueue LocalQueue in the search's namespace that admits the children: each Job is created suspended with the "
        "label kueue.x-k8s.io/queue-name, and Kueue starts it when the ClusterQueue has quota for it. Default: none (Jobs start at once).",
    )
    backoff_limit: Int = Field(
        2,
        ge=0,
        description="Retries of a failed child, the Job's backoffLimit; invalid input (exit 2) and divergence (exit 3) are never "
        "retried. At least 0. Default 2.",
    )
    start_deadline_seconds: Int = Field(
        300,
        ge=1,
        description="Seconds a child's pod may wait, once on a node, in an image pull error (ErrImagePull, ImagePullBackOff, "
        "InvalidImageName) or a container configuration error (CreateContainerConfigError: e.g. a missing Secret or ConfigMap) "
        "before the child fails with that reason and its Job is deleted, instead of holding the step until "
        "activeDeadlineSeconds; time queued for a node does not count. At least 1. Default 300.",
    )
    active_deadline_seconds: Int = Field(
        3600,
        ge=1,
        description="Seconds one attempt of a child may run, counted from its pod's start (time queued for a node does not count); "
        "at least 1. Default 3600.",
    )
    ttl_seconds_after_finished: Int = Field(
        86400,
        ge=0,
        description="Seconds a finished child's Job is kept before Kubernetes deletes it; at least 0. Default 86400 (one day).",
    )


def with_trainer_defaults(search: ArchitectureSearch, defaults: dict[str, Any]) -> ArchitectureSearch:
    """``search`` with its ``spec.trainer`` completed from an installation's ``defaults``
    (camelCase ``Trainer`` fields): a field the search sets wins, one it leaves out takes the default."""
    if not defaults:
        return search
    own = search.spec.trainer.model_dump(mode="json", by_alias=True, exclude_unset=True)
    trainer = Trainer.model_validate({**defaults, **own})
    return search.model_copy(update={"spec": search.spec.model_copy(update={"trainer": trainer})})


class StoreSpec(_Model):
    """Where the search keeps its state, its children and the shared weights: a directory or an S3-compatible bucket."""

    uri: str | None = Field(
        None,
        pattern=r"^(file|s3)://",
        description="Root of the store, file:///abs/dir or s3://bucket/prefix. Required in a cluster, where a search's data lives at "
        "<uri>/<namespace>/<name>/<uid>; on one machine the default is ./runs.",
    )
    endpoint: str | None = Field(
        None,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="Endpoint URL of an S3-compatible store such as MinIO, http:// or https://. Default: AWS S3, unless the environment sets EPNAS_S3_ENDPOINT.",
    )
    secret_name: str | None = Field(
        None,
        description="Secret in the search's namespace with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, given to the children's pods. "
        "Default: none.",
    )
    region: str | None = Field(
        None,
        description="S3 region of the bucket. Default: AWS_REGION or AWS_DEFAULT_REGION from the environment, else us-east-1.",
    )
    resume_uid: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        description="In a cluster: the uid of an earlier search of the same name and namespace to continue "
        "(its data stays at <uri>/<namespace>/<name>/<uid>). Default: a new object starts fresh.",
    )


class SearchSpec(_Model):
    """A hardware-aware architecture search: the space, the data, the resource constraints, the budget and how children are trained."""

    search_space: Literal["image-layer", "image-module", "kws-layer"] = Field(
        "image-layer",
        description="The search space: image-layer (image networks morphed layer by layer, EPNAS Table 2), image-module "
        "(a cell of branches stacked into an image network, EPNAS Table 3) or kws-layer (keyword-spotting networks layer "
        "by layer, RENA). Default image-layer.",
    )
    strategy: Literal["epnas", "epnas-paper", "random"] = Field(
        "epnas",
        description="How children are proposed: epnas, the policy with zero-cost screening and feasibility-first seeding (default); "
        "epnas-paper, the paper's algorithm exactly; random, uniform actions in the same loop.",
    )
    seed: Int = Field(
        0,
        ge=0,
        description="Seed of the policy, the random starting network and every child's training; at least 0. Default 0.",
    )
    initial_architecture: InitialArchitecture = Field(
        default_factory=lambda: InitialArchitecture(random=RandomStart()),
        description="The network every branch starts from: a random network or an explicit architecture. Default: a random network of depth 3.",
    )
    dataset: Dataset = Field(
        default_factory=Dataset, description="The data children are trained and scored on. Default: the digits dataset."
    )
    constraints: list[Constraint] = Field(
        default_factory=list,
        description="Resource constraints on the children; a child is feasible when it meets all of them, and each violation "
        "lowers its reward. Default: none.",
    )
    budget: Budget = Field(
        default_factory=Budget,
        description="How much to search: episodes, steps per episode, branches and optional early stops.",
    )
    policy: PolicySpec = Field(
        default_factory=PolicySpec,
        description="The policy network that proposes morphs, and its training; used by the epnas and epnas-paper strategies.",
    )
    screening: Screening = Field(
        default_factory=Screening,
        description="Zero-cost screening of the default epnas strategy; ignored by epnas-paper and random.",
    )
    child_training: ChildTraining = Field(
        default_factory=ChildTraining,
        description="How each child is trained during the search; numbers left unset take the regime's defaults.",
    )
    final_training: FinalTraining = Field(
        default_factory=FinalTraining,
        description="Training the best feasible children again from scratch after the search, to get the models to ship; "
        "off unless top is above 0.",
    )
    trainer: Trainer = Field(
        default_factory=Trainer,
        description="Where and how each child's Kubernetes Job runs; ignored when epnas search runs on one machine.",
    )
    store: StoreSpec = Field(
        default_factory=StoreSpec, description="Where the search keeps its state, children and shared weights."
    )
    parallelism: Int | None = Field(
        None,
        ge=1,
        description="Children trained at once; at least 1. Default: every child of a step in a cluster, or the CPU count on one machine.",
    )
    executor: Literal["jobs", "argo"] = Field(
        "jobs",
        description="What runs a step's children in a cluster: jobs, one Kubernetes Job per child (default); argo, one Argo "
        "Workflow per step with one node per child, where Argo Workflows is installed (the children's ServiceAccount needs "
        "Argo's executor Role). Ignored when epnas search runs on one machine.",
    )

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


def geometry_of(ds: Dataset, space: str, res: int | None = None) -> tuple[tuple[int, int, int], int]:
    """``dataset_geometry`` from its parts: a dataset, a search space's name, a resolution."""
    defaults: dict[str, tuple[Shape | None, int | None]] = {
        "digits": ((1, 8, 8), 10),
        "cifar10": ((3, 32, 32), 10),
        "synthetic": (SPACES[space].input_shape, 10),
        "npz": (None, None),
    }
    shape, classes = defaults[ds.kind]
    shape = as_shape(ds.input_shape) if ds.input_shape else shape
    classes = ds.num_classes or classes
    assert shape is not None and classes is not None, "Dataset's validator: npz declares inputShape and numClasses"
    if res is not None:
        shape = (shape[0], res, res)
    return shape, classes


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
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in a search file", event.start_mark
            )
        self._depth += 1
        if self._depth > MAX_NESTING:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_NESTING} levels", self.peek_event().start_mark
            )
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
        raise SpecError.one(
            "", f"{source}: {size:,} bytes; a search file may have at most {MAX_DOCUMENT_BYTES:,} (1.5 MiB)"
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SpecError.one(
                "", f"{source}: not UTF-8 text (byte {err.start}: {text[err.start : err.start + 1]!r})"
            ) from None
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
        raise SpecError(
            [Problem(f"spec.initialArchitecture.architecture.{p.path}", p.message) for p in err.problems]
        ) from None
    return search


# ---------------------------------------------------------------- CRD schema

_DROP = {"title", "discriminator"}


def structural_schema(
    model: type[BaseModel], *, mode: Literal["validation", "serialization"] = "validation"
) -> dict[str, Any]:
    """A pydantic model's JSON schema made structural for a CRD (see ``crd_openapi_schema``)."""
    raw = model.model_json_schema(by_alias=True, mode=mode)
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


def crd_openapi_schema(status: type[BaseModel] | None = None) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the CRD: the spec model's JSON schema made structural.

    ``$ref`` are inlined, ``anyOf [X, null]`` becomes ``X`` with ``nullable: true``,
    ``const`` becomes a one-value ``enum``, numeric ``exclusiveMinimum``/``Maximum`` become
    OpenAPI v3.0's ``minimum`` + ``exclusiveMinimum: true``, free-form objects keep unknown fields.
    ``status`` is the controller's: ``status`` (its model) describes the fields, and unknown
    ones are kept, so an older CRD never prunes what a newer controller writes.
    """
    spec = structural_schema(SearchSpec)
    status_schema: dict[str, Any] = {"type": "object"}
    if status is not None:
        status_schema = structural_schema(status, mode="serialization")
    status_schema["x-kubernetes-preserve-unknown-fields"] = True
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status_schema,
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
    for raw, bound, exclusive in (
        ("ge", "minimum", None),
        ("gt", "minimum", "exclusiveMinimum"),
        ("le", "maximum", None),
        ("lt", "maximum", "exclusiveMaximum"),
    ):
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
    if (
        out.get("type") == "object"
        and "properties" not in out
        and not isinstance(out.get("additionalProperties"), dict)
    ):
        out.pop("additionalProperties", None)
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "properties" in out and out.get("additionalProperties") is False:
        out.pop("additionalProperties")  # the API server forbids both; unknown fields are pruned instead
    if "pattern" in out and out.get("type") != "string":
        out.pop("pattern")
    if out.get("default") is None:
        out.pop("default", None)
    return out
