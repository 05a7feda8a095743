"""Start the whole harness outside pytest, run one pod, stop everything, report what ran.

`python -m harness.standalone WORKDIR` (with tests/ on PYTHONPATH) starts the control plane,
the node agent and MinIO, runs a pod whose process sleeps, then stops everything and prints
one JSON line: {"pids": [every server and pod process pid], "marked_while_running": [pids
carrying $EPNAS_HARNESS_RUN before teardown], "startup_s": {...}}. The process-hygiene test
sets EPNAS_HARNESS_RUN to a fresh value and checks that no process carries it afterwards,
without touching the session fixtures of the running test session (or anyone else's).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

from kubernetes import client as k8s_client

from harness import procs
from harness.controlplane import ControlPlane
from harness.minio import MinioServer
from harness.node_agent import NodeAgent
from harness.waits import wait_until

SLEEPER_MARKER = "epnas-standalone-sleeper"


def _run_sleeper(plane: ControlPlane, agent: NodeAgent) -> int:
    core = k8s_client.CoreV1Api(plane.api_client())
    wait_until(lambda: _has_default_sa(core), timeout_s=30, what="default ServiceAccount")
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "sleeper"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "python:3",
                        "command": ["python", "-c", "import time; time.sleep(600)", SLEEPER_MARKER],
                    }
                ],
            },
        },
    )
    wait_until(lambda: agent.running_pids(), timeout_s=60, what="the sleeper process")
    return agent.running_pids()[0]


def _has_default_sa(core: k8s_client.CoreV1Api) -> bool:
    return any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account("default").items)


def main(workdir: pathlib.Path) -> None:
    plane = ControlPlane(workdir / "control-plane")
    minio = MinioServer(workdir / "minio")
    agent: NodeAgent | None = None
    pids: list[int] = []
    try:
        plane.start()
        pids += [server.pid for server in plane.servers.values()]
        started = time.monotonic()
        agent = NodeAgent(
            plane.api_client, workdir=workdir / "node-agent", apiserver_port=int(plane.server.rsplit(":", 1)[1])
        )
        agent.start()
        agent_s = time.monotonic() - started
        minio.start()
        pids.append(minio.server.pid)
        pids.append(_run_sleeper(plane, agent))
        marker = procs.run_marker_env().get(procs.RUN_MARKER_ENV, "")
        marked = sorted(procs.processes_with_marker(marker) - {os.getpid()}) if marker else []
    finally:
        if agent is not None:
            agent.stop()
        minio.stop()
        plane.stop()
    print(
        json.dumps(
            {
                "pids": pids,
                "marked_while_running": marked,
                "startup_s": {"control_plane": plane.startup_s, "node_agent": agent_s, "minio": minio.startup_s},
            }
        )
    )


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
