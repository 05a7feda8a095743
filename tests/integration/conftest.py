"""Integration tests: the real control plane, node agent and MinIO from tests/harness.

Every test here is marked `integration`. Fixtures come from the harness plugin
(tests/harness/__init__.py lists them): `control_plane`, `node_agent`, `minio`,
`bucket`, `namespace`. This conftest adds `core` and `batch`, typed API clients on the
control plane. Manifest builders live in harness/manifests.py.
"""

from __future__ import annotations

import pytest
from kubernetes import client as k8s_client

INTEGRATION_DIR = __file__.rsplit("/", 1)[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.path).startswith(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def core(control_plane) -> k8s_client.CoreV1Api:
    return k8s_client.CoreV1Api(control_plane.api_client())


@pytest.fixture(scope="session")
def batch(control_plane) -> k8s_client.BatchV1Api:
    return k8s_client.BatchV1Api(control_plane.api_client())
