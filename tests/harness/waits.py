"""Waiting helpers for tests against the harness cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException

T = TypeVar("T")


def wait_until(probe: Callable[[], T | None], *, timeout_s: float, what: str, interval_s: float = 0.2) -> T:
    """Call `probe` until it returns something truthy and return that; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def job_condition(job: k8s_client.V1Job, kind: str) -> k8s_client.V1JobCondition | None:
    """The Job's condition of type `kind` when its status is True, else None."""
    for condition in (job.status.conditions or []) if job.status else []:
        if condition.type == kind and condition.status == "True":
            return condition
    return None


def wait_for_job_finished(
    batch: k8s_client.BatchV1Api, namespace: str, name: str, *, timeout_s: float = 120
) -> k8s_client.V1Job:
    """Wait until the Job has a True Complete or Failed condition; return the Job."""

    def finished() -> k8s_client.V1Job | None:
        job = batch.read_namespaced_job(name, namespace)
        return job if job_condition(job, "Complete") or job_condition(job, "Failed") else None

    return wait_until(finished, timeout_s=timeout_s, what=f"Job {namespace}/{name} to finish")


def job_pods(core: k8s_client.CoreV1Api, namespace: str, job_name: str) -> list[k8s_client.V1Pod]:
    """The pods the Job controller created for `job_name` (by its job-name label)."""
    return core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}").items


def wait_for_deleted(read: Callable[[], object], *, timeout_s: float, what: str) -> None:
    """Wait until `read()` raises a 404 ApiException."""

    def gone() -> bool:
        try:
            read()
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    wait_until(gone, timeout_s=timeout_s, what=what)
