"""The node agent's pure decisions (scheduling, resource sums, argv, $(VAR) expansion,
resourceFieldRef values), no cluster needed."""

from __future__ import annotations

import sys
from decimal import Decimal

import pytest

from harness import node_agent
from harness.node_agent import NodeConfig

TAINT = {"key": "epnas.io/dedicated", "value": "search", "effect": "NoSchedule"}


@pytest.mark.parametrize(
    ("name", "tolerations", "expected"),
    [
        ("none", [], False),
        ("equal", [{"key": "epnas.io/dedicated", "operator": "Equal", "value": "search"}], True),
        ("equal-wrong-value", [{"key": "epnas.io/dedicated", "value": "other"}], False),
        ("exists-key", [{"key": "epnas.io/dedicated", "operator": "Exists"}], True),
        ("exists-all", [{"operator": "Exists"}], True),
        ("other-effect", [{"key": "epnas.io/dedicated", "operator": "Exists", "effect": "NoExecute"}], False),
    ],
)
def test_tolerates(name, tolerations, expected):
    assert node_agent.tolerates(tolerations, TAINT) is expected


@pytest.mark.parametrize(
    ("name", "spec", "reason_part"),
    [
        ("fits", {"containers": [{}]}, None),
        ("selector-match", {"nodeSelector": {"epnas.io/pool": "gpu"}, "containers": [{}]}, None),
        ("selector-miss", {"nodeSelector": {"epnas.io/pool": "cpu"}, "containers": [{}]}, "affinity/selector"),
        (
            "affinity-notin",
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "epnas.io/pool", "operator": "NotIn", "values": ["gpu"]}]}
                            ]
                        }
                    }
                },
                "containers": [{}],
            },
            "affinity/selector",
        ),
        ("gpu-fits", {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}]}, None),
        (
            "gpu-too-many",
            {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "5"}}}]},
            "Insufficient nvidia.com/gpu",
        ),
        ("cpu-millis", {"containers": [{"resources": {"requests": {"cpu": "1500m"}}}]}, None),
        (
            "unknown-resource",
            {"containers": [{"resources": {"limits": {"example.com/fpga": "1"}}}]},
            "Insufficient example.com/fpga",
        ),
    ],
)
def test_unschedulable_reason(name, spec, reason_part):
    reason = node_agent.unschedulable_reason(spec, NodeConfig(), {})
    if reason_part is None:
        assert reason is None
    else:
        assert reason_part in reason


def test_resources_used_by_running_pods_count():
    spec = {"containers": [{"resources": {"requests": {"cpu": "1"}}}]}
    assert node_agent.unschedulable_reason(spec, NodeConfig(), {"cpu": Decimal("1.5")}) is not None


def _requests(**resources: str) -> dict:
    return {"resources": {"requests": resources}}


@pytest.mark.parametrize(
    ("name", "spec", "expected"),
    [
        ("nothing asked", {"containers": [{}]}, {"pods": 1}),
        (
            "summed over containers",
            {"containers": [_requests(cpu="500m", memory="1Gi"), _requests(cpu="250m")]},
            {"pods": 1, "cpu": Decimal("0.75"), "memory": 2**30},
        ),
        (
            "a limit stands in for a missing request only",
            {"containers": [{"resources": {"limits": {"cpu": "2", "nvidia.com/gpu": "1"}, "requests": {"cpu": "1"}}}]},
            {"pods": 1, "cpu": 1, "nvidia.com/gpu": 1},
        ),
        (
            "an init container larger than the sum wins",
            {"initContainers": [_requests(cpu="1")], "containers": [_requests(cpu="300m"), _requests(cpu="300m")]},
            {"pods": 1, "cpu": 1},
        ),
        (
            "an init container smaller than the sum does not",
            {"initContainers": [_requests(cpu="500m")], "containers": [_requests(cpu="300m"), _requests(cpu="300m")]},
            {"pods": 1, "cpu": Decimal("0.6")},
        ),
        (
            "init containers are not summed (they run one at a time)",
            {"initContainers": [_requests(cpu="1"), _requests(cpu="1")], "containers": [_requests(cpu="500m")]},
            {"pods": 1, "cpu": 1},
        ),
    ],
)
def test_pod_requests(name, spec, expected):
    assert node_agent.pod_requests(spec) == expected


@pytest.mark.parametrize(
    ("name", "used", "short"),
    [
        ("empty node", {}, []),
        ("exactly full fits", {"nvidia.com/gpu": Decimal(2), "cpu": Decimal(1)}, []),
        ("one gpu too many", {"nvidia.com/gpu": Decimal(3)}, ["nvidia.com/gpu"]),
        ("cpu and gpu", {"cpu": Decimal("1.5"), "nvidia.com/gpu": Decimal(3)}, ["cpu", "nvidia.com/gpu"]),
        ("pod slots", {"pods": Decimal(110)}, ["pods"]),
    ],
)
def test_requests_fit_next_to_what_the_running_pods_use(name, used, short):
    """A request fits when used + request <= allocatable (cpu 2, gpu 4, pods 110), per resource."""
    requests = node_agent.pod_requests(
        {"containers": [{"resources": {"requests": {"cpu": "1"}, "limits": {"nvidia.com/gpu": "2"}}}]}
    )
    assert sorted(node_agent.insufficient_resources(requests, used, NodeConfig().allocatable)) == short


def test_a_zero_request_of_an_unknown_resource_fits():
    assert node_agent.insufficient_resources({"example.com/fpga": Decimal(0)}, {}, NodeConfig().allocatable) == []


SIZED = {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1500m", "memory": "128Mi"}}}


@pytest.mark.parametrize(
    ("name", "container", "ref", "expected"),
    [
        ("cpu limit rounded up to cores", SIZED, {"resource": "limits.cpu"}, "2"),
        ("cpu request in millicores", SIZED, {"resource": "requests.cpu", "divisor": "1m"}, "250"),
        ("cpu request rounded up", SIZED, {"resource": "requests.cpu"}, "1"),
        ("divisor 0 (the API server's default) is 1", SIZED, {"resource": "limits.cpu", "divisor": "0"}, "2"),
        ("memory limit in bytes", SIZED, {"resource": "limits.memory"}, "134217728"),
        ("memory request in Mi", SIZED, {"resource": "requests.memory", "divisor": "1Mi"}, "64"),
        ("memory limit in Gi rounded up", SIZED, {"resource": "limits.memory", "divisor": "1Gi"}, "1"),
        ("missing cpu limit: the node's allocatable", {}, {"resource": "limits.cpu"}, "2"),
        ("missing memory limit: the node's allocatable", {}, {"resource": "limits.memory"}, str(24 * 2**30)),
        ("missing cpu request: 0", {}, {"resource": "requests.cpu"}, "0"),
        ("missing memory request: 0", {}, {"resource": "requests.memory", "divisor": "1Mi"}, "0"),
    ],
)
def test_resource_field_ref_values_are_the_kubelets(name, container, ref, expected):
    assert node_agent.resource_field_value(ref, container, NodeConfig().allocatable) == expected


def test_taint_without_toleration_is_unschedulable():
    config = NodeConfig(taints=[TAINT])
    assert "untolerated taint" in node_agent.unschedulable_reason({"containers": [{}]}, config, {})


@pytest.mark.parametrize(
    ("name", "container", "expected"),
    [
        (
            "python-command",
            {"image": "busybox", "command": ["python3", "-c", "print(1)"]},
            [sys.executable, "-c", "print(1)"],
        ),
        (
            "trainer-prefix",
            {"image": "ghcr.io/x/epnas-trainer:1", "args": ["--arch", "a.json"]},
            [sys.executable, "--arch", "a.json"],
        ),
        ("custom-prefix", {"image": "tool:1", "command": ["run"], "args": ["$(NAME)"]}, ["/bin/tool", "run", "value"]),
    ],
)
def test_container_argv(name, container, expected):
    images = {**node_agent.default_images(), "tool": ["/bin/tool"]}
    assert node_agent.container_argv(images, container, {"NAME": "value"}) == expected


def test_unmapped_image_is_an_error():
    with pytest.raises(node_agent.ImageNotMappedError):
        node_agent.container_argv({}, {"image": "busybox", "command": ["sh"]}, {})


def test_an_image_of_an_invalid_registry_is_never_pulled_even_with_a_python_command():
    images = node_agent.default_images()
    with pytest.raises(node_agent.ImageNotMappedError, match="registry.invalid"):
        node_agent.container_argv(
            images, {"image": "registry.invalid/epnas-trainer:1", "command": ["python", "-m", "x"]}, {}
        )
    assert node_agent.container_argv(
        images, {"image": "registry.example/epnas-trainer:1", "command": ["python"]}, {}
    ) == [sys.executable]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)-$(B)", "1-$(B)"),
        ("$$(A)", "$(A)"),
        ("plain", "plain"),
    ],
)
def test_expand_refs(text, expected):
    assert node_agent.expand_refs(text, {"A": "1"}) == expected
