"""The agent itself: registers the Node and keeps it Ready, watches every pod, and hands each
pod bound here to a `PodRunner` (rules: the package docstring, **Node** and **Deletion**).

`NodeAgent` is the public face: `start`/`stop`, `images` and `local_images`, `set_taints`,
`set_labels`, `pod_dir`, `container_log`, `running_pids`. It runs three threads: the pod watch
(relisting after a 410 or an error), the worker that reconciles one pod key at a time
(unbound → `scheduling.Scheduler`, bound here → a runner, being deleted → terminate or delete
with grace 0) and the heartbeat (Node status and Lease). It also answers the runners' API reads:
Secrets, ConfigMaps and TokenRequests."""

from __future__ import annotations

import base64
import datetime
import json
import os
import pathlib
import queue
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException

from .common import LOG, TERMINAL_PHASES, ContainerConfigError, Pod, _now, pod_key
from .runner import PodRunner, default_images
from .scheduling import NodeConfig, Scheduler
from .status import StatusPoster

HEARTBEAT_S = 10.0
WATCH_WINDOW_S = 5


class NodeAgent(Scheduler, StatusPoster):
    """Registers a Node and runs the pods bound to it as local processes (see the package docstring).

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
