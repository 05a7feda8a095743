"""Scheduling: which pending pods land on the node (rules: the package docstring, **Scheduling**).

`NodeConfig` is what the registered Node advertises. The functions are pure decisions: they
read dicts and return answers (taints vs. tolerations, nodeSelector and required node
affinity, requests summed against allocatable, and the scheduler's words when a pod does not
fit). `Scheduler` is the agent's side: it sums what the node's pods use, binds a pod that fits
(and counts it as assumed until its bound version is seen) or posts `PodScheduled=False,
reason=Unschedulable`, and re-examines the unbound pods when the node or its load changes."""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

from .common import LOG, TERMINAL_PHASES, Pod, _now, pod_key

if TYPE_CHECKING:
    from .runner import PodRunner


@dataclasses.dataclass
class NodeConfig:
    """What the registered Node advertises."""

    name: str = "epnas-node-0"
    labels: dict[str, str] = dataclasses.field(
        default_factory=lambda: {
            "epnas.io/pool": "gpu",
            "nvidia.com/gpu.present": "true",
        }
    )
    taints: list[dict[str, str]] = dataclasses.field(default_factory=list)
    allocatable: dict[str, str] = dataclasses.field(
        default_factory=lambda: {
            "cpu": "2",
            "memory": "24Gi",
            "nvidia.com/gpu": "4",
            "pods": "110",
            "ephemeral-storage": "100Gi",
        }
    )

    def all_labels(self) -> dict[str, str]:
        return {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.labels,
        }


def tolerates(tolerations: list[dict[str, Any]], taint: Mapping[str, str]) -> bool:
    """True when some toleration matches `taint` (key, operator Equal/Exists, value, effect)."""
    for toleration in tolerations:
        effect = toleration.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        operator = toleration.get("operator") or "Equal"
        key = toleration.get("key") or ""
        if operator == "Exists" and (not key or key == taint.get("key")):
            return True
        if (
            operator == "Equal"
            and key == taint.get("key")
            and (toleration.get("value") or "") == (taint.get("value") or "")
        ):
            return True
    return False


def untolerated_taints(spec: Pod, taints: list[dict[str, str]]) -> list[dict[str, str]]:
    """The NoSchedule/NoExecute taints the pod does not tolerate."""
    tolerations = spec.get("tolerations") or []
    return [
        taint
        for taint in taints
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint)
    ]


def _expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator = expression["key"], expression["operator"]
    values = expression.get("values") or []
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt") and key in labels:
        try:
            label, bound = int(labels[key]), int(values[0])
        except (ValueError, IndexError):
            return False
        return label > bound if operator == "Gt" else label < bound
    return False


def matches_node(spec: Pod, labels: Mapping[str, str]) -> bool:
    """True when nodeSelector and required node affinity accept a node with `labels`."""
    if any(labels.get(key) != value for key, value in (spec.get("nodeSelector") or {}).items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    return any(
        all(_expression_matches(expression, labels) for expression in term.get("matchExpressions") or [])
        for term in terms
    )


def pod_requests(spec: Pod) -> dict[str, Decimal]:
    """Effective requests: max(sum over containers, any init container); limits stand in for missing requests."""

    def container_requests(container: Pod) -> dict[str, Decimal]:
        resources = container.get("resources") or {}
        merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        return {name: parse_quantity(value) for name, value in merged.items()}

    total: dict[str, Decimal] = {"pods": Decimal(1)}
    for container in spec.get("containers") or []:
        for name, value in container_requests(container).items():
            total[name] = total.get(name, Decimal(0)) + value
    for container in spec.get("initContainers") or []:
        for name, value in container_requests(container).items():
            total[name] = max(total.get(name, Decimal(0)), value)
    return total


def insufficient_resources(
    requests: Mapping[str, Decimal], used: Mapping[str, Decimal], allocatable: Mapping[str, str]
) -> list[str]:
    """Names of the resources whose request does not fit next to `used` in `allocatable`."""
    short = []
    for name, amount in requests.items():
        if amount == 0:
            continue
        capacity = parse_quantity(allocatable[name]) if name in allocatable else Decimal(0)
        if used.get(name, Decimal(0)) + amount > capacity:
            short.append(name)
    return short


def unschedulable_reason(spec: Pod, config: NodeConfig, used: Mapping[str, Decimal]) -> str | None:
    """Why the pod cannot land on the node, in the scheduler's words; None when it fits."""
    if not matches_node(spec, config.all_labels()):
        return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    taints = untolerated_taints(spec, config.taints)
    if taints:
        shown = ", ".join(f"{t['key']}: {t.get('value', '')}" for t in taints)
        return f"0/1 nodes are available: 1 node(s) had untolerated taint {{{shown}}}."
    short = insufficient_resources(pod_requests(spec), used, config.allocatable)
    if short:
        return "0/1 nodes are available: " + ", ".join(f"1 Insufficient {name}" for name in short) + "."
    return None


class Scheduler:
    """The `NodeAgent`'s scheduling half (a mixin): its state lives on the agent."""

    config: NodeConfig
    _core: k8s_client.CoreV1Api
    _lock: threading.Lock
    _queue: queue.Queue[str]
    _pods: dict[str, Pod]
    _runners: dict[str, PodRunner]
    _assumed: dict[str, dict[str, Decimal]]
    _unschedulable_noted: dict[str, str]
    patch_pod_status: Callable[[str, str, dict[str, Any]], None]  # status.StatusPoster's, on the agent

    def _resync(self) -> None:
        """Re-examine every pod not yet bound (the node or its load changed)."""
        with self._lock:
            keys = [key for key, pod in self._pods.items() if not pod["spec"].get("nodeName")]
        for key in keys:
            self._queue.put(key)

    def _used_resources(self) -> dict[str, Decimal]:
        used: dict[str, Decimal] = {}
        with self._lock:
            pods = list(self._pods.values())
        counted = set()
        for pod in pods:
            uid = pod["metadata"]["uid"]
            on_node = pod["spec"].get("nodeName") == self.config.name
            if not on_node or pod.get("status", {}).get("phase") in TERMINAL_PHASES:
                continue
            runner = self._runners.get(uid)
            if runner is not None and not runner.is_alive():
                continue
            counted.add(uid)
            for name, amount in pod_requests(pod["spec"]).items():
                used[name] = used.get(name, Decimal(0)) + amount
        for uid, requests in self._assumed.items():
            if uid not in counted:
                for name, amount in requests.items():
                    used[name] = used.get(name, Decimal(0)) + amount
        return used

    def _schedule(self, pod: Pod) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        if (spec.get("schedulerName") or "default-scheduler") != "default-scheduler":
            return
        if meta["uid"] in self._assumed:
            return
        reason = unschedulable_reason(spec, self.config, self._used_resources())
        if reason is not None:
            if self._unschedulable_noted.get(meta["uid"]) != reason:
                self._unschedulable_noted[meta["uid"]] = reason
                self.patch_pod_status(
                    meta["namespace"],
                    meta["name"],
                    {
                        "conditions": [
                            {
                                "type": "PodScheduled",
                                "status": "False",
                                "reason": "Unschedulable",
                                "message": reason,
                                "lastProbeTime": None,
                                "lastTransitionTime": _now(),
                            }
                        ]
                    },
                )
            return
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.config.name},
        }
        try:
            self._core.create_namespaced_pod_binding(meta["name"], meta["namespace"], binding, _preload_content=False)
        except ApiException as error:
            if error.status not in (404, 409):
                raise
            return
        self._assumed[meta["uid"]] = pod_requests(spec)
        self._unschedulable_noted.pop(meta["uid"], None)
        LOG.info("pod %s bound to %s", pod_key(pod), self.config.name)
