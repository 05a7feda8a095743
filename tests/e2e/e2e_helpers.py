"""Helpers of the end-to-end tests (reading the CR, its Jobs, Events and the store)."""

from __future__ import annotations

import json
import pathlib
import time

from kubernetes import client as k8s_client

WRAPPER = pathlib.Path(__file__).resolve().parent / "trainer_wrapper.py"


WRAPPER_COMMAND = f"python {WRAPPER}"
# Leader election of test controllers: (lease duration, renew deadline, retry period) in seconds
LEASE = (8, 5, 1)


def read_search(control_plane, namespace: str, name: str) -> dict:
    api = k8s_client.CustomObjectsApi(control_plane.api_client())
    return api.get_namespaced_custom_object("epnas.io", "v1alpha1", namespace, "architecturesearches", name)


def wait_for_phase(
    control_plane, namespace: str, name: str, phases: tuple[str, ...], *, timeout_s: float, proc=None
) -> dict:
    deadline = time.monotonic() + timeout_s
    obj = {}
    while time.monotonic() < deadline:
        obj = read_search(control_plane, namespace, name)
        if (obj.get("status") or {}).get("phase") in phases:
            return obj
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"controller exited {proc.proc.returncode}:\n{proc.output()[-3000:]}")
        time.sleep(1)
    tail = proc.output()[-3000:] if proc is not None else ""
    raise AssertionError(
        f"{name} not in {phases} after {timeout_s} s: status {json.dumps(obj.get('status'))[:2000]}\n{tail}"
    )


def store_prefix(control_plane, namespace: str, name: str) -> str:
    """The key prefix of a search's data in the test bucket: ``searches/<namespace>/<name>/<uid>/``."""
    uid = read_search(control_plane, namespace, name)["metadata"]["uid"]
    return f"searches/{namespace}/{name}/{uid}/"


def search_jobs(control_plane, namespace: str, name: str) -> list:
    batch = k8s_client.BatchV1Api(control_plane.api_client())
    return batch.list_namespaced_job(namespace, label_selector=f"epnas.io/search={name}").items


def events_of(control_plane, namespace: str, name: str) -> list:
    core = k8s_client.CoreV1Api(control_plane.api_client())
    return [e for e in core.list_namespaced_event(namespace).items if e.involved_object.name == name]


def s3_keys(minio, bucket: str, prefix: str = "") -> dict[str, object]:
    """key → LastModified of every object under ``prefix``."""
    s3 = minio.s3_client()
    keys = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            keys[item["Key"]] = item["LastModified"]
    return keys
