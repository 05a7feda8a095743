"""Status: what the node agent reports about a pod (rules: the package docstring, **Status**).

`ContainerRun` is one container's record, and `ContainerRun.status` its `containerStatuses`
entry (state, lastState, restartCount, ready, imageID, containerID). `PodStatus` derives the
pod's phase and its conditions (lastTransitionTime moves only when a condition's status does)
and posts them; `StatusPoster` is the agent's pods/status patch, retried like the kubelet's
status manager while the API server is away. The waiting and terminated reasons themselves
(`ErrImagePull`, `CreateContainerConfigError`, `StartError`, `Completed`/`Error`,
`ContainerStatusUnknown`) are set by the runner where they happen."""

from __future__ import annotations

import dataclasses
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

from .common import LOG, TERMINAL_PHASES, _now

if TYPE_CHECKING:
    from .agent import NodeAgent

STATUS_RETRY_S = 120.0  # how long a pod's status patch is retried while the API server is away


@dataclasses.dataclass
class ContainerRun:
    name: str
    image: str
    process: subprocess.Popen[bytes] | None = None
    state: dict[str, Any] = dataclasses.field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = dataclasses.field(default_factory=dict)
    restart_count: int = 0
    restart_at: float | None = None
    image_id: str = ""  # "sha256:<id>" when the container runs in a locally built image

    def container_id(self) -> str:
        """`rootfs://<pid>` for a container in its image, `epnas://<pid>` for a host process."""
        if self.process is None:
            return ""
        return f"{'rootfs' if self.image_id else 'epnas'}://{self.process.pid}"

    def status(self, *, init: bool) -> dict[str, Any]:
        running = "running" in self.state
        status = {
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "containerID": self.container_id(),
            "ready": running
            and not init
            or (init and "terminated" in self.state and self.state["terminated"]["exitCode"] == 0),
            "started": running,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        return status


class PodStatus:
    """The `PodRunner`'s status half (a mixin): its state lives on the runner."""

    agent: NodeAgent
    namespace: str
    pod_name: str
    runs: list[ContainerRun]
    init_runs: list[ContainerRun]
    _phase: str
    _shutdown: bool
    _start_time: str
    _init_done: bool
    _transitions: dict[str, tuple[str, str]]

    def _pod_phase(self) -> str:
        if self._phase == "Failed":
            return "Failed"
        states = [run.state for run in self.runs]
        if any("running" in state for state in states) or any(run.restart_at is not None for run in self.runs):
            return "Running"
        if states and all("terminated" in state for state in states):
            if all(state["terminated"]["exitCode"] == 0 for state in states):
                return "Succeeded"
            return "Failed"
        return "Pending"

    def _post_status(self) -> None:
        if self._shutdown:
            return
        phase = self._pod_phase()
        now = _now()
        ready = phase == "Running" and all("running" in run.state for run in self.runs)
        not_ready_reason = "PodCompleted" if phase in TERMINAL_PHASES else "ContainersNotReady"

        def condition(kind: str, ok: bool, reason: str = "") -> dict[str, Any]:
            # as the kubelet: lastTransitionTime moves only when the condition's status does
            state = "True" if ok else "False"
            if self._transitions.get(kind, ("", ""))[0] != state:
                self._transitions[kind] = (state, now)
            entry: dict[str, Any] = {
                "type": kind,
                "status": state,
                "lastProbeTime": None,
                "lastTransitionTime": self._transitions[kind][1],
            }
            if reason and not ok:
                entry["reason"] = reason
            return entry

        status = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self._start_time,
            "conditions": [
                condition("PodReadyToStartContainers", True),
                condition("Initialized", self._init_done, "ContainersNotInitialized"),
                condition("ContainersReady", ready, not_ready_reason),
                condition("Ready", ready, not_ready_reason),
                condition("PodScheduled", True),
            ],
            "containerStatuses": [run.status(init=False) for run in self.runs],
        }
        if self.init_runs:
            status["initContainerStatuses"] = [run.status(init=True) for run in self.init_runs]
        self.agent.patch_pod_status(self.namespace, self.pod_name, status)


class StatusPoster:
    """The `NodeAgent`'s pods/status patch (a mixin): its client and stop event live on the agent."""

    _core: k8s_client.CoreV1Api
    _stopping: threading.Event

    def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Patch a pod's status; like the kubelet's status manager, keep retrying while the API
        server is unreachable or answers 5xx (a restart), for up to ``STATUS_RETRY_S``."""
        deadline = time.monotonic() + STATUS_RETRY_S
        while True:
            try:
                self._core.patch_namespaced_pod_status(name, namespace, {"status": status}, _preload_content=False)
                return
            except ApiException as error:
                if error.status == 404:
                    return
                if error.status < 500 or time.monotonic() > deadline:
                    LOG.warning("pod %s/%s: status patch failed: %s", namespace, name, error)
                    return
            except Exception as error:  # connection refused or reset: the API server is restarting
                if time.monotonic() > deadline:
                    LOG.warning("pod %s/%s: status patch failed: %s", namespace, name, error)
                    return
            if self._stopping.wait(1.0):
                return
