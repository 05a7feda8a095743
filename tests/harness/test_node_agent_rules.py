"""The node agent's pure decisions (scheduling, argv, $(VAR) expansion), no cluster needed."""

from __future__ import annotations

import sys
from decimal import Decimal

import pytest

from harness import node_agent
from harness.node_agent import NodeConfig

TAINT = {"key": "epnas.io/dedicated", "value": "search", "effect": "NoSchedule"}


@pytest.mark.parametrize(("name", "tolerations", "expected"), [
    ("none", [], False),
    ("equal", [{"key": "epnas.io/dedicated", "operator": "Equal", "value": "search"}], True),
    ("equal-wrong-value", [{"key": "epnas.io/dedicated", "value": "other"}], False),
    ("exists-key", [{"key": "epnas.io/dedicated", "operator": "Exists"}], True),
    ("exists-all", [{"operator": "Exists"}], True),
    ("other-effect", [{"key": "epnas.io/dedicated", "operator": "Exists", "effect": "NoExecute"}], False),
])
def test_tolerates(name, tolerations, expected):
    assert node_agent.tolerates(tolerations, TAINT) is expected


@pytest.mark.parametrize(("name", "spec", "reason_part"), [
    ("fits", {"containers": [{}]}, None),
    ("selector-match", {"nodeSelector": {"epnas.io/pool": "gpu"}, "containers": [{}]}, None),
    ("selector-miss", {"nodeSelector": {"epnas.io/pool": "cpu"}, "containers": [{}]}, "affinity/selector"),
    ("affinity-notin", {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "epnas.io/pool", "operator": "NotIn", "values": ["gpu"]}]}]}}},
        "containers": [{}]}, "affinity/selector"),
    ("gpu-fits", {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}]}, None),
    ("gpu-too-many", {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "5"}}}]},
     "Insufficient nvidia.com/gpu"),
    ("cpu-millis", {"containers": [{"resources": {"requests": {"cpu": "1500m"}}}]}, None),
    ("unknown-resource", {"containers": [{"resources": {"limits": {"example.com/fpga": "1"}}}]},
     "Insufficient example.com/fpga"),
])
def test_unschedulable_reason(name, spec, reason_part):
    reason = node_agent.unschedulable_reason(spec, NodeConfig(), {})
    if reason_part is None:
        assert reason is None
    else:
        assert reason_part in reason


def test_resources_used_by_running_pods_count():
    spec = {"containers": [{"resources": {"requests": {"cpu": "1"}}}]}
    assert node_agent.unschedulable_reason(spec, NodeConfig(), {"cpu": Decimal("1.5")}) is not None


def test_taint_without_toleration_is_unschedulable():
    config = NodeConfig(taints=[TAINT])
    assert "untolerated taint" in node_agent.unschedulable_reason({"containers": [{}]}, config, {})


@pytest.mark.parametrize(("name", "container", "expected"), [
    ("python-command", {"image": "busybox", "command": ["python3", "-c", "print(1)"]},
     [sys.executable, "-c", "print(1)"]),
    ("trainer-prefix", {"image": "ghcr.io/x/epnas-trainer:1", "args": ["--arch", "a.json"]},
     [sys.executable, "--arch", "a.json"]),
    ("custom-prefix", {"image": "tool:1", "command": ["run"], "args": ["$(NAME)"]},
     ["/bin/tool", "run", "value"]),
])
def test_container_argv(name, container, expected):
    images = {**node_agent.default_images(), "tool": ["/bin/tool"]}
    assert node_agent.container_argv(images, container, {"NAME": "value"}) == expected


def test_unmapped_image_is_an_error():
    with pytest.raises(node_agent.ImageNotMappedError):
        node_agent.container_argv({}, {"image": "busybox", "command": ["sh"]}, {})


@pytest.mark.parametrize(("text", "expected"), [
    ("$(A)-$(B)", "1-$(B)"), ("$$(A)", "$(A)"), ("plain", "plain"),
])
def test_expand_refs(text, expected):
    assert node_agent.expand_refs(text, {"A": "1"}) == expected
