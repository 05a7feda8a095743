"""The node agent's kubelet behaviours, on the real control plane: what its docstring promises
about resource sums, restarts, init containers, envFrom, resourceFieldRef, configMap/secret
volumes and termination messages, read back from the pod status the API server holds."""

from __future__ import annotations

import base64
import json
import time

import pytest
from kubernetes import client as k8s_client

from harness import manifests, waits

pytestmark = pytest.mark.integration

# A snippet's view of its mounts (the process runs on the host: mountPath → host dir).
MOUNTS = "import json, os, pathlib, sys\nmounts = {k: pathlib.Path(v) for k, v in json.loads(os.environ['EPNAS_MOUNTS']).items()}\n"
REPORT = "open(os.environ['EPNAS_TERMINATION_LOG'], 'w').write(json.dumps(report))\n"


@pytest.fixture(scope="module")
def core(control_plane) -> k8s_client.CoreV1Api:
    return k8s_client.CoreV1Api(control_plane.api_client())


def _finished(core, namespace: str, name: str, *, timeout_s: float = 60) -> k8s_client.V1Pod:
    return waits.wait_until(
        lambda: (p := core.read_namespaced_pod(name, namespace)).status.phase in ("Succeeded", "Failed") and p,
        timeout_s=timeout_s,
        what=f"pod {name} to finish",
    )


def _status(pod: k8s_client.V1Pod, container: str, *, init: bool = False) -> k8s_client.V1ContainerStatus:
    statuses = pod.status.init_container_statuses if init else pod.status.container_statuses
    return next(s for s in statuses or [] if s.name == container)


def _report(pod: k8s_client.V1Pod, container: str = "main"):
    return json.loads(_status(pod, container).state.terminated.message)


def _gpus(count: int) -> dict:
    return {"resources": {"limits": {"nvidia.com/gpu": str(count)}}}


def test_requests_are_summed_over_the_running_pods_and_freed_when_one_ends(core, namespace, node_agent):
    """3 of the node's 4 GPUs are held by a running pod: a pod asking for 2 (which alone would
    fit) stays Pending; once the holder has Succeeded, it is bound and runs."""
    wait_for_release = "import os, time\nwhile not os.path.exists('release'):\n    time.sleep(0.1)\n"
    holder = manifests.python_pod("holder", wait_for_release)
    holder["spec"]["containers"][0].update(_gpus(3))
    core.create_namespaced_pod(namespace, holder)
    waits.wait_until(
        lambda: core.read_namespaced_pod("holder", namespace).status.phase == "Running",
        timeout_s=60,
        what="the holder to run",
    )
    second = manifests.python_pod("second", "print(1)")
    second["spec"]["containers"][0].update(_gpus(2))
    core.create_namespaced_pod(namespace, second)

    scheduled = waits.wait_until(
        lambda: next(
            (
                c
                for c in core.read_namespaced_pod("second", namespace).status.conditions or []
                if c.type == "PodScheduled"
            ),
            None,
        ),
        timeout_s=30,
        what="the second pod's PodScheduled condition",
    )
    time.sleep(2)  # the agent re-examines pending pods on every change: give it time to (wrongly) bind
    pending = core.read_namespaced_pod("second", namespace)
    assert scheduled.status == "False" and "Insufficient nvidia.com/gpu" in scheduled.message
    assert pending.spec.node_name is None and pending.status.phase == "Pending"

    (node_agent.pod_dir(namespace, "holder") / "work" / "release").touch()

    assert _finished(core, namespace, "holder").status.phase == "Succeeded"
    assert _finished(core, namespace, "second").status.phase == "Succeeded"


def _counting(then: str) -> str:
    """A snippet that counts its own runs in the emptyDir at /state, then does `then` (sees `runs`)."""
    return (
        MOUNTS + "count = mounts['/state'] / 'runs'\n"
        "runs = len(count.read_text()) + 1 if count.exists() else 1\n"
        "count.write_text('x' * runs)\n" + then
    )


def _counting_pod(name: str, then: str, restart_policy: str) -> dict:
    body = manifests.python_pod(
        name, _counting(then), restart_policy=restart_policy, volumes=[{"name": "state", "emptyDir": {}}]
    )
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "state", "mountPath": "/state"}]
    return body


def test_on_failure_restarts_a_failed_container_until_it_exits_0(core, namespace, node_agent):
    core.create_namespaced_pod(namespace, _counting_pod("flaky", "sys.exit(3 if runs == 1 else 0)", "OnFailure"))

    pod = _finished(core, namespace, "flaky")

    status = _status(pod, "main")
    assert pod.status.phase == "Succeeded"
    assert status.restart_count == 1
    assert status.last_state.terminated.exit_code == 3 and status.last_state.terminated.reason == "Error"
    assert status.state.terminated.exit_code == 0 and status.state.terminated.reason == "Completed"
    assert (node_agent.pod_dir(namespace, "flaky") / "volumes" / "state" / "runs").read_text() == "xx"


def test_always_restarts_a_container_that_exits_0(core, namespace, node_agent):
    """Exits 0 twice, then stays up: restarted twice, Running, its last state the second exit."""
    core.create_namespaced_pod(
        namespace, _counting_pod("server", "import time\nif runs <= 2:\n    sys.exit(0)\ntime.sleep(600)\n", "Always")
    )

    pod = waits.wait_until(
        lambda: (
            (p := core.read_namespaced_pod("server", namespace)).status.container_statuses
            and _status(p, "main").state.running
            and _status(p, "main").restart_count >= 2
            and p
        ),
        timeout_s=60,
        what="the server to run after two restarts",
    )

    runs = node_agent.pod_dir(namespace, "server") / "volumes" / "state" / "runs"
    waits.wait_until(lambda: runs.read_text() == "xxx", timeout_s=30, what="the third run to count itself")
    time.sleep(1)
    pod = core.read_namespaced_pod("server", namespace)
    status = _status(pod, "main")
    assert pod.status.phase == "Running" and status.state.running
    assert status.restart_count == 2
    assert status.last_state.terminated.exit_code == 0 and status.last_state.terminated.reason == "Completed"
    assert runs.read_text() == "xxx"
    core.delete_namespaced_pod("server", namespace, grace_period_seconds=0)


def _ordered_pod(name: str, first_code: int) -> dict:
    """Two init containers append their names to /work/order (the first after 1 s, then exiting
    `first_code`); the main container reports what it finds there."""

    def init(step: str, code: str) -> dict:
        return {
            **manifests.python_container(
                MOUNTS
                + code
                + f"(mounts['/work'] / 'order').open('a').write('{step}\\n')\n"
                + (f"sys.exit({first_code})\n" if step == "first" else ""),
                name=step,
            ),
            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
        }

    main = manifests.python_container(
        MOUNTS + "report = (mounts['/work'] / 'order').read_text()\n" + REPORT,
        volumeMounts=[{"name": "work", "mountPath": "/work"}],
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "work", "emptyDir": {}}],
            "initContainers": [init("first", "import time\ntime.sleep(1)\n"), init("second", "")],
            "containers": [main],
        },
    }


def test_init_containers_run_one_after_the_other_before_the_main_container(core, namespace, node_agent):
    core.create_namespaced_pod(namespace, _ordered_pod("ordered", 0))

    pod = _finished(core, namespace, "ordered")

    assert pod.status.phase == "Succeeded", node_agent.container_log(namespace, "ordered", "main")
    assert _report(pod) == "first\nsecond\n"  # the first slept 1 s and still came first; main saw both
    for name in ("first", "second"):
        terminated = _status(pod, name, init=True).state.terminated
        assert terminated.exit_code == 0 and terminated.reason == "Completed"
    initialized = next(c for c in pod.status.conditions if c.type == "Initialized")
    assert initialized.status == "True"


def test_a_failed_init_container_fails_the_pod_and_nothing_after_it_runs(core, namespace, node_agent):
    core.create_namespaced_pod(namespace, _ordered_pod("broken", 5))

    pod = _finished(core, namespace, "broken")
    time.sleep(2)  # nothing may start later either

    assert pod.status.phase == "Failed"
    assert _status(pod, "first", init=True).state.terminated.exit_code == 5
    for name, init in (("second", True), ("main", False)):
        state = _status(core.read_namespaced_pod("broken", namespace), name, init=init).state
        assert state.running is None and state.terminated is None, (name, state)
    assert (node_agent.pod_dir(namespace, "broken") / "volumes" / "work" / "order").read_text() == "first\n"
    initialized = next(c for c in pod.status.conditions if c.type == "Initialized")
    assert initialized.status == "False"


def test_env_from_config_maps_and_secrets_waits_for_a_missing_config_map(core, namespace, node_agent):
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"user": "ada", "pass": "pw"}}
    )
    keys = ("level", "colour", "S_user", "S_pass", "LEVEL_TOO")
    body = manifests.python_pod(
        "envfrom", f"import json, os\nreport = {{k: v for k, v in os.environ.items() if k in {keys!r}}}\n" + REPORT
    )
    body["spec"]["containers"][0].update(
        envFrom=[
            {"configMapRef": {"name": "settings"}},
            {"secretRef": {"name": "creds"}, "prefix": "S_"},
            {"configMapRef": {"name": "absent", "optional": True}},
        ],
        env=[{"name": "LEVEL_TOO", "value": "$(level)!"}, {"name": "colour", "value": "blue"}],
    )
    core.create_namespaced_pod(namespace, body)

    waiting = waits.wait_until(
        lambda: (
            (p := core.read_namespaced_pod("envfrom", namespace)).status.container_statuses
            and (w := _status(p, "main").state.waiting)
            and w.reason == "CreateContainerConfigError"
            and w
        ),
        timeout_s=60,
        what="the container to wait for its ConfigMap",
    )
    time.sleep(2)  # retried each second: still waiting, not started
    assert _status(core.read_namespaced_pod("envfrom", namespace), "main").state.waiting is not None
    assert "settings" in waiting.message
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"level": "debug", "colour": "red"}}
    )

    pod = _finished(core, namespace, "envfrom")

    assert pod.status.phase == "Succeeded", node_agent.container_log(namespace, "envfrom")
    # env after envFrom: `colour` overridden, and $(level) from the ConfigMap expanded
    assert _report(pod) == {"level": "debug", "colour": "blue", "S_user": "ada", "S_pass": "pw", "LEVEL_TOO": "debug!"}


def test_resource_field_refs_give_requests_limits_and_the_nodes_allocatable(core, namespace, node_agent):
    def ref(name: str, resource: str, divisor: str | None = None) -> dict:
        field = {"resource": resource, **({"divisor": divisor} if divisor else {})}
        return {"name": name, "valueFrom": {"resourceFieldRef": field}}

    code = "import json, os\nreport = {k: v for k, v in os.environ.items() if k.startswith('R_')}\n" + REPORT
    sized = manifests.python_container(
        code,
        name="sized",
        resources={"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1500m", "memory": "128Mi"}},
        env=[
            ref("R_LIMIT_CPU", "limits.cpu"),
            ref("R_REQUEST_MILLICPU", "requests.cpu", "1m"),
            ref("R_LIMIT_MEMORY", "limits.memory"),
            ref("R_REQUEST_MEMORY_MI", "requests.memory", "1Mi"),
        ],
    )
    bare = manifests.python_container(
        code,
        name="bare",
        env=[
            ref("R_LIMIT_CPU", "limits.cpu"),
            ref("R_LIMIT_MEMORY_GI", "limits.memory", "1Gi"),
            ref("R_REQUEST_CPU", "requests.cpu"),
        ],
    )
    core.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sizes"},
            "spec": {"restartPolicy": "Never", "containers": [sized, bare]},
        },
    )

    pod = _finished(core, namespace, "sizes")

    assert pod.status.phase == "Succeeded", node_agent.container_log(namespace, "sizes", "sized")
    assert _report(pod, "sized") == {
        "R_LIMIT_CPU": "2",
        "R_REQUEST_MILLICPU": "250",
        "R_LIMIT_MEMORY": str(128 * 2**20),
        "R_REQUEST_MEMORY_MI": "64",
    }
    assert _report(pod, "bare") == {"R_LIMIT_CPU": "2", "R_LIMIT_MEMORY_GI": "24", "R_REQUEST_CPU": "0"}


def test_config_map_and_secret_volumes_hold_one_file_per_key(core, namespace, node_agent):
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {"name": "files"},
            "data": {"a.txt": "alpha", "b.txt": "beta"},
            "binaryData": {"blob": base64.b64encode(b"\x00\xff").decode()},
        },
    )
    core.create_namespaced_secret(namespace, {"metadata": {"name": "keys"}, "stringData": {"id": "k1", "token": "t0k"}})
    code = (
        MOUNTS + "report = {path: {str(f.relative_to(root)): f.read_bytes().hex() for f in sorted(root.rglob('*'))"
        " if f.is_file()} for path, root in mounts.items() if path.startswith('/etc/')}\n" + REPORT
    )
    body = manifests.python_pod(
        "files",
        code,
        volumes=[
            {"name": "all", "configMap": {"name": "files"}},
            {"name": "some", "configMap": {"name": "files", "items": [{"key": "b.txt", "path": "sub/renamed.txt"}]}},
            {"name": "secret", "secret": {"secretName": "keys"}},
            {"name": "optional", "configMap": {"name": "absent", "optional": True}},
        ],
    )
    body["spec"]["containers"][0]["volumeMounts"] = [
        {"name": name, "mountPath": f"/etc/{name}", "readOnly": True} for name in ("all", "some", "secret", "optional")
    ]
    core.create_namespaced_pod(namespace, body)

    pod = _finished(core, namespace, "files")

    assert pod.status.phase == "Succeeded", node_agent.container_log(namespace, "files")
    assert _report(pod) == {
        "/etc/all": {"a.txt": b"alpha".hex(), "b.txt": b"beta".hex(), "blob": b"\x00\xff".hex()},
        "/etc/some": {"sub/renamed.txt": b"beta".hex()},
        "/etc/secret": {"id": b"k1".hex(), "token": b"t0k".hex()},
        "/etc/optional": {},
    }


def test_termination_messages_are_capped_and_fall_back_to_the_log_on_error(core, namespace, node_agent):
    def container(name: str, code: str, *, fallback: bool) -> dict:
        return manifests.python_container(
            "import os, sys\nlog = os.environ['EPNAS_TERMINATION_LOG']\n" + code,
            name=name,
            terminationMessagePolicy="FallbackToLogsOnError" if fallback else "File",
        )

    containers = [
        container("capped", "open(log, 'w').write('a' * 4096 + 'b' * 1000)\n", fallback=False),
        container("fallback", "print('\\n'.join(f'line {i}' for i in range(1, 101)))\nsys.exit(1)\n", fallback=True),
        container("fallback-on-success", "print('logged')\n", fallback=True),
        container(
            "file-first", "open(log, 'w').write('from the file')\nprint('from the log')\nsys.exit(1)\n", fallback=True
        ),
        container("file-policy", "print('from the log')\nsys.exit(1)\n", fallback=False),
    ]
    core.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "messages"},
            "spec": {"restartPolicy": "Never", "containers": containers},
        },
    )

    pod = _finished(core, namespace, "messages")

    messages = {s.name: s.state.terminated.message or "" for s in pod.status.container_statuses}
    assert pod.status.phase == "Failed"
    assert messages["capped"] == "a" * 4096
    assert messages["fallback"].splitlines() == [f"line {i}" for i in range(21, 101)]  # the last 80 lines
    assert messages["fallback-on-success"] == ""  # exit 0: no fallback
    assert messages["file-first"] == "from the file"  # a message in the file wins over the log
    assert messages["file-policy"] == ""  # policy File: never the log
