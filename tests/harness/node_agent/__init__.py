"""Node agent: the scheduler and kubelet of the test cluster, running pods as local processes.

There is no container runtime here, so this agent stands in for the two cluster parts that
would need one. Everything else (Job, garbage-collector, Deployment controllers, admission,
RBAC) is the real kube-apiserver / kube-controller-manager.

What it does, and the rules a test (or a later engineer) can rely on:

* **Node.** Registers one Node (default `epnas-node-0`) with allocatable cpu 2, memory 24Gi,
  nvidia.com/gpu 4, pods 110, labels `epnas.io/pool: gpu`, `nvidia.com/gpu.present: "true"`,
  `kubernetes.io/hostname`, `kubernetes.io/os`, `kubernetes.io/arch`, and no taints. Labels,
  taints and allocatable are configurable (`NodeConfig`, `NodeAgent.set_taints`,
  `NodeAgent.set_labels`). Its Ready condition is refreshed every 10 s, and its Lease in
  `kube-node-lease` renewed.
* **Scheduling.** A pending pod whose `schedulerName` is `default-scheduler` is bound to the
  node when `nodeSelector`, required node affinity (`In`, `NotIn`, `Exists`, `DoesNotExist`,
  `Gt`, `Lt`), tolerations vs. NoSchedule/NoExecute taints, and resource requests (summed over
  the node's non-terminal pods, against allocatable) all fit. Otherwise it stays Pending with
  condition `PodScheduled=False, reason=Unschedulable`, like the real scheduler says it, and
  is retried whenever the node or the pods on it change.
* **Command.** An image maps to a command prefix through `NodeAgent.images` (a dict the tests
  may change at any time): an exact image match wins, else the longest key contained in the
  image name. By default any image containing `trainer`, `controller` or `python` maps to
  `[sys.executable]` (the venv's python). argv = prefix + container `command` + `args`; but
  when `command[0]` is `python`/`python3`/`pythonX.Y`, it is replaced by `sys.executable` and
  the prefix is not used. `$(VAR)` references are expanded from the container env. An image
  with no mapping leaves the container Waiting with reason `ErrImagePull` until one is added, and
  so does any image of a registry under `.invalid` (RFC 6761: never resolves), whatever its command;
  an argv that cannot be executed ends the container with exit code 128, reason `StartError`.
* **Images.** `NodeAgent.local_images` maps a pod's image name to a locally built image
  (scripts/images, in buildah's store). A container whose image is there runs *in its image*
  (harness/rootfs.py): its own mount namespace, an overlay on the image's rootfs, volumes
  bind-mounted at their mountPaths (`readOnly` honoured), the termination-message file at
  `terminationMessagePath`, `/proc`, `/sys`, a minimal `/dev`; argv from the image's
  Entrypoint/Cmd and the container's command/args (Kubernetes' rule); env = the image's Env,
  then the pod's; uid/gid from `runAsUser`/`runAsGroup` (container, then pod) or the image's
  USER; `runAsNonRoot` with uid 0 is a CreateContainerConfigError; `readOnlyRootFilesystem`
  makes the overlay read-only. Every other container runs on the host, as below.
* **Environment.** Each process gets a small base env (PATH with the venv's bin first, HOME =
  the pod dir, HOSTNAME = pod name, LANG, KUBERNETES_SERVICE_HOST/PORT = the apiserver), then
  `envFrom` and `env`: literal values, `secretKeyRef`, `configMapKeyRef` (with `optional`),
  `fieldRef` (metadata.name/namespace/uid, metadata.labels['k'], metadata.annotations['k'],
  spec.nodeName, spec.serviceAccountName, status.podIP and status.hostIP → 127.0.0.1),
  `resourceFieldRef` (the container's requests/limits; a missing limit is the node's
  allocatable, a missing request 0; divided by `divisor` and rounded up). A missing
  non-optional Secret/ConfigMap leaves the container Waiting with reason
  `CreateContainerConfigError`, retried each second.
* **Files.** Every pod gets a directory `<workdir>/pods/<ns>_<name>_<uid8>/`; the process runs
  in its `work/` subdir (or in the host dir of `workingDir` when that is a mountPath).
  Volumes: `emptyDir` and `persistentVolumeClaim` → a fresh dir in the pod dir, `configMap` and
  `secret` → a dir with one file per key, `hostPath` → the path itself, `projected` → a dir
  with its ConfigMap/Secret keys, downward-API fields and a real pod-bound ServiceAccount
  token (TokenRequest API); so the automatic `kube-api-access-*` volume at
  /var/run/secrets/kubernetes.io/serviceaccount holds `token`, `ca.crt` and `namespace`,
  and a process that reads them from `EPNAS_MOUNTS` talks to the apiserver as its
  ServiceAccount (RBAC applies). Other kinds (`downwardAPI` volumes, CSI, ...) are skipped. A process runs on the host, so mountPaths do not
  exist for it: a mount at `/tmp` sets `TMPDIR` to its host dir, and `EPNAS_MOUNTS` holds the
  JSON map {mountPath: host dir} of every mount of the container.
* **Termination message.** `EPNAS_TERMINATION_LOG` is set to a per-container file; a program
  that would write `terminationMessagePath` (default /dev/termination-log) writes there when
  the variable is set (our trainer does). When the process exits, that file (first 4096
  bytes) becomes the terminated state's `message`; with `FallbackToLogsOnError` and a
  non-zero exit and an empty file, the log tail is used, as the kubelet does.
* **Status.** Status goes through the pods/status subresource: Running with conditions
  PodScheduled, PodReadyToStartContainers, Initialized, ContainersReady, Ready, podIP/hostIP
  127.0.0.1, containerStatuses running; then Succeeded/Failed with terminated exitCode, reason
  `Completed`/`Error`, message. restartPolicy Never, OnFailure (restart on non-zero exit) and
  Always (restart on any exit) are honoured, with `restartCount` and `lastState`; init
  containers run one after the other first, and one that exits non-zero fails the pod
  without starting the rest, whatever the restartPolicy (the kubelet would restart it
  unless the policy is Never).
  Readiness/liveness probes are ignored (a running container is ready).
* **Deletion.** When a pod gets a deletionTimestamp its process groups get SIGTERM, then
  SIGKILL after the grace period; the final status is posted and the pod deleted with grace
  0, as the kubelet does. Pod finalizers (the Job controller's job-tracking) are left to
  their owners. Stdout+stderr of each container go to `<pod dir>/<container>.log`
  (`NodeAgent.container_log`), since there is no `kubectl logs` without a kubelet.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import logging
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

from harness import procs, rootfs

LOG = logging.getLogger("epnas.node_agent")
Pod = dict[str, Any]
TERMINAL_PHASES = ("Succeeded", "Failed")
STATUS_RETRY_S = 120.0  # how long a pod's status patch is retried while the API server is away
HEARTBEAT_S = 10.0
WATCH_WINDOW_S = 5
PYTHON_COMMAND = re.compile(r"^python(3(\.\d+)?)?$")


def default_images() -> dict[str, list[str]]:
    """The default image → command-prefix table: trainer, controller and python images run the venv python."""
    return {"trainer": [sys.executable], "controller": [sys.executable], "python": [sys.executable]}


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


class ContainerConfigError(Exception):
    """A container cannot be configured yet (missing Secret/ConfigMap key): kubelet retries."""


class ImageNotMappedError(Exception):
    """No command prefix is known for the container's image."""


# ----------------------------------------------------------------------------------------
# Pure decisions: scheduling and argv. They read dicts and return answers, nothing else.


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_key(pod: Pod) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


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


def image_prefix(images: Mapping[str, list[str]], image: str) -> list[str] | None:
    """The command prefix for `image`: exact match, else the longest key contained in it."""
    if image in images:
        return list(images[image])
    untagged = image.rsplit(":", 1)[0] if "/" not in image.rsplit(":", 1)[-1] else image
    if untagged in images:
        return list(images[untagged])
    candidates = [key for key in images if key and key in image]
    if not candidates:
        return None
    return list(images[max(candidates, key=len)])


def expand_refs(text: str, env: Mapping[str, str]) -> str:
    """Expand `$(VAR)` from `env` the way the kubelet does (`$$` escapes, unknown refs stay)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, text)


def container_argv(images: Mapping[str, list[str]], container: Pod, env: Mapping[str, str]) -> list[str]:
    """The local argv for a container (rules in the module docstring)."""
    command = [expand_refs(part, env) for part in container.get("command") or []]
    args = [expand_refs(part, env) for part in container.get("args") or []]
    registry = container.get("image", "").split("/", 1)[0]
    if registry.split(":", 1)[0].endswith(".invalid"):  # a kubelet could never pull it
        raise ImageNotMappedError(
            f"failed to pull image {container.get('image')!r}: dial tcp: lookup {registry}: no such host"
        )
    if command and PYTHON_COMMAND.match(os.path.basename(command[0])):
        return [sys.executable, *command[1:], *args]
    prefix = image_prefix(images, container.get("image", ""))
    if prefix is None:
        raise ImageNotMappedError(
            f"node agent has no command prefix for image {container.get('image')!r}; add one to node_agent.images"
        )
    return [*prefix, *command, *args]


def resource_field_value(ref: Mapping[str, Any], container: Pod, allocatable: Mapping[str, str]) -> str:
    """A `resourceFieldRef` env value as the kubelet computes it: the container's request or
    limit (a missing limit is the node's allocatable, a missing request 0) divided by
    `divisor` (unset or 0 means 1) and rounded up to an integer."""
    kind, _, resource = ref["resource"].partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(resource)
    if value is None:
        value = allocatable.get(resource, "0") if kind == "limits" else "0"
    divisor = parse_quantity(ref.get("divisor") or "1") or Decimal(1)
    return str(int((parse_quantity(value) / divisor).to_integral_value(rounding="ROUND_CEILING")))


def exit_code(returncode: int) -> int:
    """Popen's returncode as a container exit code (killed by signal N → 128+N)."""
    return 128 - returncode if returncode < 0 else returncode


# ----------------------------------------------------------------------------------------
# One pod's lifecycle on the node.


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


class PodRunner(threading.Thread):
    """Runs one bound pod's containers as local processes and reports its status."""

    def __init__(self, agent: NodeAgent, pod: Pod) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}-{meta['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.namespace, self.pod_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = agent.workdir / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        self.spec = pod["spec"]
        self.restart_policy = self.spec.get("restartPolicy") or "Always"
        self.init_runs = [ContainerRun(c["name"], c.get("image", "")) for c in self.spec.get("initContainers") or []]
        self.runs = [ContainerRun(c["name"], c.get("image", "")) for c in self.spec.get("containers") or []]
        self._terminate = threading.Event()
        self._grace_s = 30.0
        self._shutdown = False
        self._start_time = _now()
        self._transitions: dict[str, tuple[str, str]] = {}  # condition type → (status, when it last changed)
        self._init_done = not self.init_runs
        self._phase = "Pending"

    # -- control from the agent

    def request_termination(self, *, grace_s: float, shutdown: bool = False) -> None:
        """Stop the pod's processes (SIGTERM, SIGKILL after `grace_s`); `shutdown` skips API calls."""
        self._grace_s = grace_s
        self._shutdown = shutdown
        self._terminate.set()

    # -- thread body

    def run(self) -> None:
        try:
            self._run()
        except Exception:  # the runner must never die silently: the pod would hang Running
            LOG.exception("pod %s/%s: runner failed", self.namespace, self.pod_name)
            self._kill_all(grace_s=0)

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "work").mkdir(exist_ok=True)
        volumes = self._wait_for(self._prepare_volumes)
        if volumes is None:
            return self._finish_terminated()
        for index, container in enumerate(self.spec.get("initContainers") or []):
            run = self.init_runs[index]
            if not self._start(run, container, volumes):
                return self._finish_terminated()
            self._post_status()
            while run.process is not None and run.process.poll() is None:
                if self._terminate.wait(0.1):
                    return self._finish_terminated()
            self._record_exit(run, container)
            if run.state["terminated"]["exitCode"] != 0:
                self._phase = "Failed"
                self._post_status()
                return self.agent.runner_done(self)
        self._init_done = True
        for run, container in zip(self.runs, self.spec["containers"]):
            if not self._start(run, container, volumes):
                return self._finish_terminated()
        self._monitor(volumes)

    def _wait_for(self, step: Callable[[], Any]) -> Any:
        """Call `step` until it stops raising ContainerConfigError; None if the pod is terminated meanwhile."""
        while True:
            try:
                return step()
            except ContainerConfigError as error:
                for run in self.runs:
                    run.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(error)}}
                self._post_status()
            if self._terminate.wait(1.0):
                return None

    def _start(self, run: ContainerRun, container: Pod, volumes: dict[str, pathlib.Path]) -> bool:
        """Start one container's process; False if the pod was terminated while waiting."""
        image_ref = self.agent.local_images.get(container.get("image", ""))
        while True:
            try:
                if image_ref is None:
                    env = self._container_env(container, volumes)
                    argv = container_argv(self.agent.images, container, env)
                else:
                    env = self._image_env(container, image_ref)
                    argv = rootfs.image_config(image_ref).argv(
                        [expand_refs(part, env) for part in container.get("command") or []],
                        [expand_refs(part, env) for part in container.get("args") or []],
                    )
                    uid, gid = self._run_as(container, image_ref)
                    run.image_id = f"sha256:{rootfs.image_id(image_ref)}"
                break
            except ContainerConfigError as error:
                run.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(error)}}
            except ImageNotMappedError as error:
                run.state = {"waiting": {"reason": "ErrImagePull", "message": str(error)}}
            self._post_status()
            if self._terminate.wait(1.0):
                return False
        cwd = self._mounts(container, volumes).get(container.get("workingDir") or "", self.dir / "work")
        log_path = self.dir / f"{run.name}.log"
        termination_log = self._termination_log(run.name)
        termination_log.write_bytes(b"")
        termination_log.chmod(0o666)  # as the kubelet makes it: the container's user writes it
        started_at = _now()
        try:
            with open(log_path, "ab") as log:
                if image_ref is None:
                    run.process = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=cwd,
                        start_new_session=True,
                    )
                else:
                    security = container.get("securityContext") or {}
                    run.process = rootfs.launch(
                        rootfs.image_rootfs(image_ref),
                        argv,
                        env=env,
                        state_dir=self.dir / "rootfs" / f"{run.name}-{run.restart_count}",
                        mounts=self._image_mounts(container, volumes),
                        workdir=container.get("workingDir") or rootfs.image_config(image_ref).workdir,
                        uid=uid,
                        gid=gid,
                        read_only_root=bool(security.get("readOnlyRootFilesystem")),
                        termination_log=(
                            container.get("terminationMessagePath") or "/dev/termination-log",
                            termination_log,
                        ),
                        stdout=log,
                    )
        except (OSError, RuntimeError) as error:
            run.process = None
            run.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": f"{argv[0]}: {error}",
                    "startedAt": started_at,
                    "finishedAt": _now(),
                    "containerID": "",
                }
            }
            return True
        LOG.info("pod %s/%s: started %s pid %d: %s", self.namespace, self.pod_name, run.name, run.process.pid, argv)
        run.state = {"running": {"startedAt": started_at}}
        return True

    def _monitor(self, volumes: dict[str, pathlib.Path]) -> None:
        containers = {c["name"]: c for c in self.spec["containers"]}
        self._post_status()
        while True:
            if self._terminate.wait(0.1):
                return self._finish_terminated()
            changed = False
            for run in self.runs:
                if run.process is not None and "running" in run.state and run.process.poll() is not None:
                    self._record_exit(run, containers[run.name])
                    self._maybe_schedule_restart(run)
                    changed = True
                if run.restart_at is not None and time.monotonic() >= run.restart_at:
                    run.restart_at = None
                    run.restart_count += 1
                    run.last_state = run.state
                    if not self._start(run, containers[run.name], volumes):
                        return self._finish_terminated()
                    changed = True
            if changed:
                self._post_status()
            if all("terminated" in run.state and run.restart_at is None for run in self.runs):
                return self.agent.runner_done(self)

    def _maybe_schedule_restart(self, run: ContainerRun) -> None:
        code = run.state["terminated"]["exitCode"]
        if self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0):
            run.restart_at = time.monotonic() + min(10.0, 2.0**run.restart_count)

    def _record_exit(self, run: ContainerRun, container: Pod) -> None:
        assert run.process is not None
        code = exit_code(run.process.returncode)
        started = run.state.get("running", {}).get("startedAt", _now())
        run.state = {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "message": self._termination_message(run, container, code),
                "startedAt": started,
                "finishedAt": _now(),
                "containerID": run.container_id(),
            }
        }
        # the process is gone; its group may not be (a child it left behind): clean it up
        procs.kill_group(run.process.pid, grace_s=0)
        LOG.info("pod %s/%s: %s exited %d", self.namespace, self.pod_name, run.name, code)

    def _termination_log(self, container_name: str) -> pathlib.Path:
        return self.dir / f"{container_name}.termination-log"

    def _termination_message(self, run: ContainerRun, container: Pod, code: int) -> str:
        try:
            message = self._termination_log(run.name).read_bytes()[:4096].decode("utf-8", "replace")
        except FileNotFoundError:
            message = ""
        if not message and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = procs.log_tail(self.dir / f"{run.name}.log", max_bytes=2048).splitlines()[-80:]
            message = "\n".join(lines)
        return message

    def _kill_all(self, *, grace_s: float) -> None:
        alive = [
            run.process for run in self.init_runs + self.runs if run.process is not None and run.process.poll() is None
        ]
        for process in alive:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        for process in alive:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            procs.kill_group(process.pid, grace_s=0)
            process.wait()

    def _finish_terminated(self) -> None:
        """The pod is being deleted (or the agent stops): kill, report, delete with grace 0."""
        self._kill_all(grace_s=self._grace_s)
        if self._shutdown:
            return
        containers = {c["name"]: c for c in (self.spec.get("initContainers") or []) + self.spec["containers"]}
        for run in self.init_runs + self.runs:
            if run.process is not None and "running" in run.state:
                self._record_exit(run, containers[run.name])
            elif "waiting" in run.state:
                run.state = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": "pod deleted before the container started",
                        "startedAt": None,
                        "finishedAt": _now(),
                    }
                }
        self._post_status()
        self.agent.runner_done(self)
        self.agent.delete_pod_now(self.namespace, self.pod_name, self.uid)

    # -- status

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

    # -- env, volumes, mounts

    def _prepare_volumes(self) -> dict[str, pathlib.Path]:
        """Materialise the pod's volumes as host dirs; name → dir (skipped kinds absent)."""
        volumes: dict[str, pathlib.Path] = {}
        for volume in self.spec.get("volumes") or []:
            name = volume["name"]
            target = self.dir / "volumes" / name
            if "hostPath" in volume:
                volumes[name] = pathlib.Path(volume["hostPath"]["path"])
            elif "emptyDir" in volume or "persistentVolumeClaim" in volume:
                target.mkdir(parents=True, exist_ok=True)
                target.chmod(0o777)  # the kubelet's emptyDir mode: any uid may write
                volumes[name] = target
            elif "configMap" in volume or "secret" in volume:
                self._write_key_files(volume, target)
                volumes[name] = target
            elif "projected" in volume:
                self._write_projected(volume["projected"], target)
                volumes[name] = target
        return volumes

    def _write_projected(self, projected: Pod, target: pathlib.Path) -> None:
        """Write a projected volume: a real ServiceAccount token (TokenRequest), ConfigMap/Secret
        keys and downward-API fields, so a process can talk to the apiserver as its ServiceAccount."""
        target.mkdir(parents=True, exist_ok=True)
        files: dict[str, bytes] = {}
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                token_source = source["serviceAccountToken"]
                token = self.agent.request_token(
                    self.namespace,
                    self.spec.get("serviceAccountName") or "default",
                    audience=token_source.get("audience"),
                    expiration_s=token_source.get("expirationSeconds") or 3607,
                    pod_name=self.pod_name,
                    pod_uid=self.uid,
                )
                files[token_source["path"]] = token.encode()
            for kind, is_secret in (("configMap", False), ("secret", True)):
                if kind in source:
                    ref = source[kind]
                    data = self.agent.read_data(
                        self.namespace, ref["name"], secret=is_secret, optional=bool(ref.get("optional"))
                    )
                    for item in ref.get("items") or [{"key": key, "path": key} for key in data]:
                        if item["key"] in data:
                            files[item["path"]] = data[item["key"]]
            for item in (source.get("downwardAPI") or {}).get("items") or []:
                if "fieldRef" in item:
                    files[item["path"]] = self._field_value(item["fieldRef"]["fieldPath"]).encode()
        for path, content in files.items():
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            (target / path).write_bytes(content)

    def _write_key_files(self, volume: Pod, target: pathlib.Path) -> None:
        source = volume.get("configMap") or volume.get("secret")
        is_secret = "secret" in volume
        name = source.get("secretName") if is_secret else source.get("name")
        data = self.agent.read_data(self.namespace, name, secret=is_secret, optional=bool(source.get("optional")))
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        target.mkdir(parents=True, exist_ok=True)
        for item in items:
            if item["key"] not in data:
                raise ContainerConfigError(f"key {item['key']!r} not found in {name}")
            path = target / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[item["key"]])

    def _mounts(self, container: Pod, volumes: Mapping[str, pathlib.Path]) -> dict[str, pathlib.Path]:
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            host = volumes.get(mount["name"])
            if host is None:
                continue
            if mount.get("subPath"):
                host = host / mount["subPath"]
                host.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = host
        return mounts

    def _run_as(self, container: Pod, image_ref: str) -> tuple[int, int]:
        """The container's uid/gid: securityContext (container, then pod), else the image's USER."""
        pod_context = self.spec.get("securityContext") or {}
        context = {**pod_context, **(container.get("securityContext") or {})}
        image_uid, image_gid = rootfs.image_config(image_ref).uid_gid()
        uid = int(context.get("runAsUser", image_uid))
        gid = int(context.get("runAsGroup", image_gid))
        if context.get("runAsNonRoot") and uid == 0:
            raise ContainerConfigError("container has runAsNonRoot and image will run as root")
        return uid, gid

    def _image_mounts(self, container: Pod, volumes: Mapping[str, pathlib.Path]) -> list[rootfs.Mount]:
        read_only = {m["mountPath"]: bool(m.get("readOnly")) for m in container.get("volumeMounts") or []}
        return [
            rootfs.Mount(path, host, read_only.get(path, False))
            for path, host in self._mounts(container, volumes).items()
        ]

    def _image_env(self, container: Pod, image_ref: str) -> dict[str, str]:
        """A container in its image: the image's Env, then what the kubelet adds, then the pod's."""
        env = {
            **rootfs.image_config(image_ref).env,
            "HOSTNAME": self.pod_name,
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.agent.apiserver_port),
            **procs.run_marker_env(),
        }
        self._add_pod_env(container, env)
        return env

    def _container_env(self, container: Pod, volumes: Mapping[str, pathlib.Path]) -> dict[str, str]:
        venv_bin = str(pathlib.Path(sys.executable).parent)
        env = {
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
            "HOME": str(self.dir),
            "HOSTNAME": self.pod_name,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.agent.apiserver_port),
            **procs.run_marker_env(),
        }
        self._add_pod_env(container, env)
        mounts = self._mounts(container, volumes)
        if "/tmp" in mounts:
            env["TMPDIR"] = str(mounts["/tmp"])
        env["EPNAS_MOUNTS"] = json.dumps({path: str(host) for path, host in mounts.items()})
        env["EPNAS_TERMINATION_LOG"] = str(self._termination_log(container["name"]))
        env["EPNAS_POD_DIR"] = str(self.dir)
        return env

    def _add_pod_env(self, container: Pod, env: dict[str, str]) -> None:
        """`envFrom`, then `env`, into `env` (later entries see earlier ones in `$(VAR)`)."""
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix") or ""
            ref = source.get("configMapRef") or source.get("secretRef")
            is_secret = "secretRef" in source
            data = self.agent.read_data(
                self.namespace, ref["name"], secret=is_secret, optional=bool(ref.get("optional"))
            )
            env.update({prefix + key: value.decode("utf-8", "replace") for key, value in data.items()})
        for entry in container.get("env") or []:
            value = self._env_value(entry, container, env)
            if value is not None:
                env[entry["name"]] = value

    def _env_value(self, entry: Pod, container: Pod, env: Mapping[str, str]) -> str | None:
        if "valueFrom" not in entry:
            return expand_refs(entry.get("value") or "", env)
        source = entry["valueFrom"]
        for ref_kind, is_secret in (("secretKeyRef", True), ("configMapKeyRef", False)):
            if ref_kind in source:
                ref = source[ref_kind]
                optional = bool(ref.get("optional"))
                data = self.agent.read_data(self.namespace, ref["name"], secret=is_secret, optional=optional)
                if ref["key"] not in data:
                    if optional:
                        return None
                    raise ContainerConfigError(
                        f"couldn't find key {ref['key']} in {ref_kind[:-6]} {self.namespace}/{ref['name']}"
                    )
                return data[ref["key"]].decode("utf-8", "replace")
        if "fieldRef" in source:
            return self._field_value(source["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in source:
            return resource_field_value(source["resourceFieldRef"], container, self.agent.config.allocatable)
        return None

    def _field_value(self, path: str) -> str:
        meta = self.pod["metadata"]
        match = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
        if match:
            return (meta.get(match.group(1)) or {}).get(match.group(2), "")
        values = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": self.agent.config.name,
            "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
            "status.podIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
        }
        if path not in values:
            raise ContainerConfigError(f"unsupported fieldRef {path!r}")
        return values[path]


# ----------------------------------------------------------------------------------------
# The agent: node registration, scheduling, pod watch, runners.


class NodeAgent:
    """Registers a Node and runs the pods bound to it as local processes (see module docstring).

    `images` is the mutable image → command-prefix table; `config` the NodeConfig; `workdir`
    holds the pods' dirs and logs. `start()` registers the node and starts the threads;
    `stop()` kills every pod process and joins the threads.
    """

    def __init__(
        self,
        api_client_factory: Callable[[], k8s_client.ApiClient],
        *,
        workdir: pathlib.Path,
        apiserver_port: int,
        config: NodeConfig | None = None,
        images: dict[str, list[str]] | None = None,
    ) -> None:
        self._new_client = api_client_factory
        self.workdir = workdir
        self.apiserver_port = apiserver_port
        self.config = config or NodeConfig()
        self.images = images if images is not None else default_images()
        self.local_images: dict[str, str] = {}  # pod image name → image built here (rootfs.py)
        self._core = k8s_client.CoreV1Api(api_client_factory())
        self._stopping = threading.Event()
        self._queue: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self._pods: dict[str, Pod] = {}
        self._runners: dict[str, PodRunner] = {}
        self._assumed: dict[str, dict[str, Decimal]] = {}
        self._unschedulable_noted: dict[str, str] = {}
        self._deleted_uids: set[str] = set()
        self._threads: list[threading.Thread] = []

    # -- public API

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._register_node()
        self._threads = [
            threading.Thread(target=self._watch_pods, name="node-agent-watch", daemon=True),
            threading.Thread(target=self._work, name="node-agent-worker", daemon=True),
            threading.Thread(target=self._heartbeat, name="node-agent-heartbeat", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            runners = list(self._runners.values())
        for runner in runners:
            runner.request_termination(grace_s=2.0, shutdown=True)
        for runner in runners:
            runner.join(timeout=15)
        for thread in self._threads:
            thread.join(timeout=WATCH_WINDOW_S + 10)

    def set_taints(self, taints: list[dict[str, str]]) -> None:
        """Replace the node's taints (e.g. [{'key': 'k', 'value': 'v', 'effect': 'NoSchedule'}])."""
        self.config.taints = [dict(taint) for taint in taints]
        self._core.patch_node(self.config.name, {"spec": {"taints": self.config.taints or None}})
        self._resync()

    def set_labels(self, labels: dict[str, str]) -> None:
        """Replace the configurable node labels (the kubernetes.io/* ones stay)."""
        old = set(self.config.all_labels())
        self.config.labels = dict(labels)
        patch = {key: None for key in old - set(self.config.all_labels())}
        patch.update(self.config.all_labels())
        self._core.patch_node(self.config.name, {"metadata": {"labels": patch}})
        self._resync()

    def pod_dir(self, namespace: str, name: str) -> pathlib.Path | None:
        """The newest local dir of pod `namespace/name`, or None if it never ran here."""
        with self._lock:
            runners = [r for r in self._runners.values() if (r.namespace, r.pod_name) == (namespace, name)]
        return runners[-1].dir if runners else None

    def container_log(self, namespace: str, name: str, container: str | None = None) -> str:
        """Stdout+stderr of a pod's container ('' if it never ran here); default: the first container."""
        directory = self.pod_dir(namespace, name)
        if directory is None:
            return ""
        with self._lock:
            runner = next(r for r in reversed(list(self._runners.values())) if r.dir == directory)
        path = directory / f"{container or runner.runs[0].name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def running_pids(self) -> list[int]:
        """Pids of the container processes still running."""
        with self._lock:
            runners = list(self._runners.values())
        return [
            run.process.pid
            for runner in runners
            for run in runner.init_runs + runner.runs
            if run.process is not None and run.process.poll() is None
        ]

    # -- calls from runners

    def runner_done(self, runner: PodRunner) -> None:
        LOG.info("pod %s/%s: done", runner.namespace, runner.pod_name)
        self._resync()

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

    def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        """Delete a pod with grace 0 (what the kubelet does once its containers are gone)."""
        if uid in self._deleted_uids:
            return
        self._deleted_uids.add(uid)
        try:
            self._core.delete_namespaced_pod(
                name,
                namespace,
                grace_period_seconds=0,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
                _preload_content=False,
            )
        except ApiException as error:
            if error.status not in (404, 409):
                LOG.warning("pod %s/%s: delete failed: %s", namespace, name, error)

    def request_token(
        self,
        namespace: str,
        service_account: str,
        *,
        audience: str | None,
        expiration_s: int,
        pod_name: str,
        pod_uid: str,
    ) -> str:
        """A pod-bound ServiceAccount token from the TokenRequest API."""
        spec: dict[str, Any] = {
            "expirationSeconds": max(600, int(expiration_s)),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid},
        }
        if audience:
            spec["audiences"] = [audience]
        try:
            response = self._core.create_namespaced_service_account_token(
                service_account, namespace, {"spec": spec}, _preload_content=False
            )
        except ApiException as error:
            if error.status == 404:
                raise ContainerConfigError(f"serviceaccount {service_account!r} not found") from error
            raise
        return json.loads(response.data)["status"]["token"]

    def read_data(self, namespace: str, name: str, *, secret: bool, optional: bool) -> dict[str, bytes]:
        """A Secret's or ConfigMap's data as bytes by key; {} if optional and absent."""
        try:
            if secret:
                obj = self._core.read_namespaced_secret(name, namespace)
                return {key: base64.b64decode(value) for key, value in (obj.data or {}).items()}
            obj = self._core.read_namespaced_config_map(name, namespace)
            data = {key: value.encode() for key, value in (obj.data or {}).items()}
            data.update({key: base64.b64decode(value) for key, value in (obj.binary_data or {}).items()})
            return data
        except ApiException as error:
            if error.status == 404:
                if optional:
                    return {}
                raise ContainerConfigError(f"{'secret' if secret else 'configmap'} {name!r} not found") from error
            raise

    # -- node

    def _node_status(self) -> dict[str, Any]:
        now = _now()

        def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        return {
            "capacity": dict(self.config.allocatable),
            "allocatable": dict(self.config.allocatable),
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "epnas node agent"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "epnas node agent"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "epnas node agent"),
                condition("Ready", "True", "KubeletReady", "epnas node agent is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.config.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "epnas test node",
                "containerRuntimeVersion": "epnas-node-agent://1",
                "kubeletVersion": "v0.0.0-epnas",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register_node(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.config.name, "labels": self.config.all_labels()},
            "spec": {"taints": self.config.taints or None},
        }
        try:
            self._core.create_node(body, _preload_content=False)
        except ApiException as error:
            if error.status != 409:
                raise
            self._core.patch_node(self.config.name, body, _preload_content=False)
        self._core.patch_node_status(self.config.name, {"status": self._node_status()}, _preload_content=False)
        self._renew_lease(k8s_client.CoordinationV1Api(self._core.api_client))

    def _renew_lease(self, coordination: k8s_client.CoordinationV1Api) -> None:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.config.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.config.name, "leaseDurationSeconds": 40, "renewTime": now},
        }
        try:
            coordination.patch_namespaced_lease(self.config.name, "kube-node-lease", lease, _preload_content=False)
        except ApiException as error:
            if error.status != 404:
                raise
            coordination.create_namespaced_lease("kube-node-lease", lease, _preload_content=False)

    def _heartbeat(self) -> None:
        core = k8s_client.CoreV1Api(self._new_client())
        coordination = k8s_client.CoordinationV1Api(core.api_client)
        while not self._stopping.wait(HEARTBEAT_S):
            try:
                core.patch_node_status(self.config.name, {"status": self._node_status()}, _preload_content=False)
                self._renew_lease(coordination)
            except Exception:  # keep beating; a failed beat is logged, the next one retries
                LOG.exception("node heartbeat failed")

    # -- pod watch and reconcile

    def _watch_pods(self) -> None:
        core = k8s_client.CoreV1Api(self._new_client())
        resource_version = None
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist(core)
                stream = k8s_watch.Watch().stream(
                    core.list_pod_for_all_namespaces,
                    resource_version=resource_version,
                    timeout_seconds=WATCH_WINDOW_S,
                    allow_watch_bookmarks=True,
                )
                for event in stream:
                    obj = event["raw_object"]
                    if event["type"] == "ERROR":
                        resource_version = None
                        break
                    resource_version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._on_event(event["type"], obj)
                    if self._stopping.is_set():
                        break
            except ApiException as error:
                if error.status == 410:
                    resource_version = None
                    continue
                LOG.warning("pod watch failed: %s", error)
                self._stopping.wait(0.5)
            except Exception:  # connection resets etc.: re-watch from the last version
                if not self._stopping.is_set():
                    LOG.exception("pod watch failed")
                self._stopping.wait(0.5)

    def _relist(self, core: k8s_client.CoreV1Api) -> str:
        response = core.list_pod_for_all_namespaces(_preload_content=False)
        listing = json.loads(response.data)
        seen = set()
        for item in listing["items"]:
            item.setdefault("kind", "Pod")
            self._on_event("MODIFIED", item)
            seen.add(pod_key(item))
        with self._lock:
            gone = [key for key in self._pods if key not in seen]
        for key in gone:
            with self._lock:
                pod = self._pods.get(key)
            if pod is not None:
                self._on_event("DELETED", pod)
        return listing["metadata"]["resourceVersion"]

    def _on_event(self, kind: str, pod: Pod) -> None:
        key = pod_key(pod)
        with self._lock:
            if kind == "DELETED":
                self._pods.pop(key, None)
            else:
                self._pods[key] = pod
        self._queue.put(key if kind != "DELETED" else f"DELETED:{pod['metadata']['uid']}:{key}")

    def _resync(self) -> None:
        """Re-examine every pod not yet bound (the node or its load changed)."""
        with self._lock:
            keys = [key for key, pod in self._pods.items() if not pod["spec"].get("nodeName")]
        for key in keys:
            self._queue.put(key)

    def _work(self) -> None:
        idle_since = time.monotonic()
        while not self._stopping.is_set():
            try:
                key = self._queue.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() - idle_since > 5:
                    self._resync()
                    idle_since = time.monotonic()
                continue
            idle_since = time.monotonic()
            try:
                self._reconcile(key)
            except Exception:  # one bad pod must not stop the node
                LOG.exception("reconcile %s failed", key)

    def _reconcile(self, key: str) -> None:
        if key.startswith("DELETED:"):
            _, uid, _ = key.split(":", 2)
            with self._lock:
                runner = self._runners.get(uid)
            if runner is not None and runner.is_alive():
                runner.request_termination(grace_s=0, shutdown=True)
            self._assumed.pop(uid, None)
            return
        with self._lock:
            pod = self._pods.get(key)
        if pod is None:
            return
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        if not spec.get("nodeName"):
            if not meta.get("deletionTimestamp"):
                self._schedule(pod)
            return
        if spec["nodeName"] != self.config.name:
            return
        self._assumed.pop(uid, None)
        with self._lock:
            runner = self._runners.get(uid)
        if meta.get("deletionTimestamp"):
            grace = meta.get("deletionGracePeriodSeconds")
            if runner is not None and runner.is_alive():
                runner.request_termination(grace_s=float(30 if grace is None else grace))
            else:
                self.delete_pod_now(meta["namespace"], meta["name"], uid)
            return
        if runner is None and pod.get("status", {}).get("phase") not in TERMINAL_PHASES:
            runner = PodRunner(self, pod)
            with self._lock:
                self._runners[uid] = runner
            runner.start()

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
