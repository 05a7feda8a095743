"""The process runner: one bound pod's containers as local processes (rules: the package
docstring, **Command**, **Images**, **Environment**, **Termination message**, **Deletion**).

The pure part maps an image to a command prefix and builds a container's argv (`$(VAR)`
expanded), computes `resourceFieldRef` values and turns a Popen returncode into an exit code.
`PodRunner` is the thread per pod: it waits for the pod's volumes (`volumes.PodVolumes`), runs
the init containers one after the other and then the containers, on the host (a new session,
the base env, `EPNAS_MOUNTS`, `EPNAS_TERMINATION_LOG`) or in their image (`harness.rootfs`: its
own mount namespace via `unshare`, the overlay, bind mounts, uid/gid), logs each container to
`<pod dir>/<container>.log`, records exits and termination messages, restarts per
restartPolicy, and on deletion kills the process groups (SIGTERM, SIGKILL after the grace
period) before reporting (`status.PodStatus`) and deleting the pod with grace 0."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from kubernetes.utils import parse_quantity

from harness import procs, rootfs

from .common import LOG, ContainerConfigError, ImageNotMappedError, Pod, _now
from .status import ContainerRun, PodStatus
from .volumes import PodVolumes

if TYPE_CHECKING:
    from .agent import NodeAgent

PYTHON_COMMAND = re.compile(r"^python(3(\.\d+)?)?$")


def default_images() -> dict[str, list[str]]:
    """The default image → command-prefix table: trainer, controller and python images run the venv python."""
    return {"trainer": [sys.executable], "controller": [sys.executable], "python": [sys.executable]}


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
    """The local argv for a container (rules in the package docstring)."""
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


class PodRunner(PodVolumes, PodStatus, threading.Thread):
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
