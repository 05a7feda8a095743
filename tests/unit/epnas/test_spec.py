"""The ArchitectureSearch document: defaults, every problem named by its path, the CRD schema."""

from __future__ import annotations

import pytest
import yaml

from epnas.errors import SpecError
from epnas.spec import crd_openapi_schema, dataset_geometry, initial_arch, load_search, parse_search

MINIMAL = """
apiVersion: epnas.io/v1alpha1
kind: ArchitectureSearch
metadata: {name: tiny}
spec: {}
"""


def test_defaults_are_the_papers() -> None:
    spec = load_search(MINIMAL).spec
    assert spec.budget.branches == 8 and spec.budget.top_k == 8 and spec.budget.episodes == 15
    assert spec.steps_per_episode == 10
    assert spec.policy.learning_rate == 6e-4 and spec.policy.scale_groups == 4 and spec.policy.init_range == 0.1
    assert spec.policy.embedding_size == 32 and spec.policy.hidden_size == 128
    standard = spec.child_training.model_copy(update={"regime": "standard"}).resolved()
    assert (standard.epochs, standard.batch_size, standard.lr, standard.lr_min, standard.t0, standard.t_mult) == (
        20,
        128,
        0.05,
        0.001,
        10,
        2,
    )
    prediction = spec.child_training.resolved()
    assert (prediction.epochs, prediction.batch_size, prediction.lr) == (10, 1024, 0.5)


def test_module_space_defaults_to_five_steps() -> None:
    assert load_search(MINIMAL.replace("spec: {}", "spec: {searchSpace: image-module}")).spec.steps_per_episode == 5


def doc(**spec) -> str:
    return yaml.safe_dump(
        {"apiVersion": "epnas.io/v1alpha1", "kind": "ArchitectureSearch", "metadata": {"name": "s"}, "spec": spec}
    )


@pytest.mark.parametrize(
    "name, text, path, words",
    [
        (
            "min > max",
            doc(constraints=[{"metric": "flops", "min": 10, "max": 5}]),
            "spec.constraints[0]",
            "min (10) > max (5)",
        ),
        ("no bound", doc(constraints=[{"metric": "flops"}]), "spec.constraints[0]", "set 'min', 'max' or both"),
        (
            "unknown metric",
            doc(constraints=[{"metric": "latency", "max": 5}]),
            "spec.constraints[0].metric",
            "Input should be",
        ),
        ("unknown space", doc(searchSpace="audio"), "spec.searchSpace", "Input should be"),
        ("unknown field", doc(budjet={"episodes": 3}), "spec.budjet", "Extra inputs"),
        ("negative episodes", doc(budget={"episodes": -1}), "spec.budget.episodes", "greater than or equal to 1"),
        ("cifar without uri", doc(dataset={"kind": "cifar10"}), "spec.dataset", "needs 'uri'"),
        ("unknown dataset", doc(dataset={"kind": "imagenet"}), "spec.dataset.kind", "Input should be"),
        (
            "bad initial arch",
            doc(initialArchitecture={"architecture": {"layers": [{"op": "conv9d", "src1": 0}]}}),
            "spec.initialArchitecture.architecture.layers[0].op",
            "unknown op",
        ),
        (
            "both starts",
            doc(initialArchitecture={"random": {"depth": 2}, "architecture": {"layers": []}}),
            "spec.initialArchitecture",
            "exactly one",
        ),
        ("bad name", doc().replace("name: s", "name: Bad_Name"), "metadata.name", "pattern"),
        ("bad quantity", doc(trainer={"memory": "lots"}), "spec.trainer.memory", "pattern"),
        ("wrong kind", doc().replace("kind: ArchitectureSearch", "kind: Search"), "kind", "Input should be"),
        ("not yaml", "spec: [", "", "not valid YAML"),
        ("not a mapping", "- 1\n- 2\n", "", "must be a mapping"),
    ],
)
def test_bad_search_files_name_the_field(name: str, text: str, path: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_search(text)
    assert any(p.path == path and words in p.message for p in caught.value.problems), caught.value.problems


def test_every_problem_at_once() -> None:
    text = doc(budget={"episodes": 0, "branches": 0}, constraints=[{"metric": "flops", "min": 3, "max": 1}], seed="x")
    with pytest.raises(SpecError) as caught:
        load_search(text)
    assert {"spec.budget.episodes", "spec.budget.branches", "spec.constraints[0]", "spec.seed"} <= {
        p.path for p in caught.value.problems
    }


def test_explicit_initial_architecture_and_geometry() -> None:
    text = doc(
        searchSpace="image-layer",
        dataset={"kind": "digits"},
        initialArchitecture={
            "architecture": {"layers": [{"op": "conv2d", "src1": 0, "channels": 16, "width": 3, "activation": "relu"}]}
        },
    )
    spec = load_search(text).spec
    assert initial_arch(spec).layers[0].channels == 16
    assert dataset_geometry(spec) == ((1, 8, 8), 10)
    assert dataset_geometry(
        spec.model_copy(update={"child_training": spec.child_training.model_copy(update={"resolution": 4})})
    ) == ((1, 4, 4), 10)


def _walk(node, path="$"):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_crd_schema_is_structural() -> None:
    """No $ref, anyOf, const or title anywhere; every object has properties or keeps unknown fields."""
    schema = crd_openapi_schema()
    for path, node in _walk(schema):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "const", "title", "$defs"} & set(node), path
        if node.get("type") == "object" and path != "$.properties.metadata":  # the API server owns metadata
            assert (
                "properties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
                or "additionalProperties" in node
            ), path
    spec = schema["properties"]["spec"]["properties"]
    assert spec["searchSpace"]["enum"] == ["image-layer", "image-module", "kws-layer"]
    assert spec["constraints"]["items"]["properties"]["penalty"]["default"] == 0.9
    assert spec["budget"]["properties"]["stepsPerEpisode"]["nullable"] is True


# ---------------------------------------------------------------- hostile documents

HEAD = "apiVersion: epnas.io/v1alpha1\nkind: ArchitectureSearch\nmetadata: {name: x}\n"


@pytest.mark.parametrize(
    "name, text, words",
    [
        (
            "aliases (billion laughs)",
            HEAD + "spec:\n  dataset:\n    options: {a: &x [1, 2], b: [*x, *x]}\n",
            "YAML aliases (*name) are not allowed",
        ),
        ("duplicate key", HEAD + "spec:\n  seed: 1\n  seed: 2\n", "duplicate key 'seed'"),
        (
            "nesting bomb",
            HEAD + "spec:\n  dataset:\n    options: " + "[" * 20000 + "]" * 20000 + "\n",
            "nested deeper than 64 levels",
        ),
        ("not UTF-8", b"\xff\xfe\x00\x01 binary junk", "not UTF-8 text (byte 0"),
        ("over 1.5 MiB", HEAD + "# " + "x" * 1_600_000, "a search file may have at most 1,572,864 (1.5 MiB)"),
    ],
)
def test_hostile_documents_get_one_clear_error(name: str, text, words: str) -> None:
    with pytest.raises(SpecError) as err:
        load_search(text, source="s.yaml")
    assert len(err.value.problems) == 1 and words in str(err.value) and "s.yaml" in str(err.value)


@pytest.mark.parametrize(
    "spec, path, words",
    [
        ({"budget": {"episodes": True}}, "spec.budget.episodes", "must be a number, not a boolean"),
        ({"policy": {"learningRate": False}}, "spec.policy.learningRate", "must be a number, not a boolean"),
        ({"seed": -1}, "spec.seed", "greater than or equal to 0"),
        ({"seed": 2**64}, "spec.seed", "less than or equal to 9223372036854775807"),
        ({"budget": {"branches": 2**70}}, "spec.budget.branches", "less than or equal to"),
        ({"childTraining": {"lr": float("inf")}}, "spec.childTraining.lr", "finite number"),
        ({"policy": {"learningRate": float("nan")}}, "spec.policy.learningRate", "greater than 0"),
        ({"childTraining": {"weightDecay": float("nan")}}, "spec.childTraining.weightDecay", ""),
        ({"constraints": [{"metric": "modelSize", "max": float("inf")}]}, "spec.constraints[0].max", "finite number"),
    ],
)
def test_numbers_are_numbers_in_range(spec: dict, path: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_search(
            {"apiVersion": "epnas.io/v1alpha1", "kind": "ArchitectureSearch", "metadata": {"name": "x"}, "spec": spec}
        )
    assert [(p.path, words in p.message) for p in err.value.problems] == [(path, True)]


def test_yaml_infinity_is_refused_by_name() -> None:
    with pytest.raises(SpecError) as err:
        load_search(HEAD + "spec: {childTraining: {lr: .inf}}\n")
    assert [p.path for p in err.value.problems] == ["spec.childTraining.lr"] and "finite" in str(err.value)


def test_a_float_written_without_a_dot_still_reads_as_a_number() -> None:
    # YAML 1.1 reads `6e-4` as a string; it is still a learning rate
    assert load_search(HEAD + "spec: {policy: {learningRate: 6e-4}}\n").spec.policy.learning_rate == 6e-4


@pytest.mark.parametrize("endpoint", ["not a url", "minio:9000", "ftp://minio:9000", "http://"])
def test_a_store_endpoint_must_be_an_http_url(endpoint: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_search(
            {
                "apiVersion": "epnas.io/v1alpha1",
                "kind": "ArchitectureSearch",
                "metadata": {"name": "x"},
                "spec": {"store": {"uri": "s3://b/p", "endpoint": endpoint}},
            }
        )
    assert [p.path for p in err.value.problems] == ["spec.store.endpoint"]


def test_a_store_endpoint_may_have_a_port_and_a_path() -> None:
    for endpoint in ("http://minio.epnas.svc:9000", "https://s3.example.com/", "http://127.0.0.1:9000"):
        parse_search(
            {
                "apiVersion": "epnas.io/v1alpha1",
                "kind": "ArchitectureSearch",
                "metadata": {"name": "x"},
                "spec": {"store": {"uri": "s3://b/p", "endpoint": endpoint}},
            }
        )


def test_installation_trainer_defaults_fill_what_the_search_leaves_out():
    from epnas.spec import with_trainer_defaults

    search = parse_search(
        {
            "apiVersion": "epnas.io/v1alpha1",
            "kind": "ArchitectureSearch",
            "metadata": {"name": "s"},
            "spec": {"trainer": {"gpu": 0, "memory": "2Gi"}},
        }
    )
    defaults = {
        "image": "registry.example/trainer:2",
        "gpu": 1,
        "memory": "32Gi",
        "priorityClassName": "gpu-batch",
        "nodeSelector": {"pool": "gpu"},
    }
    trainer = with_trainer_defaults(search, defaults).spec.trainer

    assert (trainer.gpu, trainer.memory) == (0, "2Gi")  # the search's own
    assert (trainer.image, trainer.priority_class_name, trainer.node_selector) == (
        "registry.example/trainer:2",
        "gpu-batch",
        {"pool": "gpu"},
    )
    assert trainer.cpu == "2"  # neither: the model's default
    assert with_trainer_defaults(search, {}) is search
