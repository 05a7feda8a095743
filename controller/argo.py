"""One Argo Workflow per step, one node per child: ``workflow_manifest`` (pure) and ``ArgoExecutor``
(the ``Executor`` protocol, the same constructor as ``JobExecutor``), for ``spec.executor: argo``.

The Workflow ``<search>-e<episode>-s<step>`` has a DAG entrypoint with one task per child and no
dependencies, ``spec.parallelism`` the step's (patched when ``parallelism()`` changes), and one
container template per child, named after it and made from ``job_manifest``'s pod template, so a
child's pod is the Job path's pod: image, command and arguments, env (store credentials only as
``secretKeyRef``), resources, security contexts, the ``/tmp`` emptyDir, node selector,
tolerations, affinity, priority class, image pull secrets, ServiceAccount, active deadline and
labels. Argo adds its ``init`` and ``wait`` containers and runs the trainer under its emissary.
Differences from a Job, all Argo's:

* the pod keeps its ServiceAccount token: Argo's ``wait`` container reports the result with it
  (a ``WorkflowTaskResult``), so that ServiceAccount needs Argo's executor Role (create and patch
  ``workflowtaskresults``); a Job's pod has ``automountServiceAccountToken: false``;
* retries are Argo's ``retryStrategy``: ``limit`` = ``spec.trainer.backoffLimit``, policy Always,
  except when the last attempt exited 2 (invalid input) or 3 (diverged), ``epnas.errors.NOT_RETRIED``,
  which ends the child at once as the Job's ``podFailurePolicy`` does;
* ``ttlSecondsAfterFinished`` is not copied: the Workflow is owned by the search (ownerReference,
  ``controller: true``, ``blockOwnerDeletion``) and goes with it.

The wait polls the Workflow (``POLL_S``) rather than watching: one object per step. A child's
outcome is read from its task's node when that node ends: its last attempt's exit code and
message, the attempts, the seconds. Results then come from the store exactly as with Jobs. A 409
on create adopts the existing Workflow (a restarted controller): never a twin. A Workflow deleted
while unfinished ends the step with ``SearchStopped`` when the search is being stopped, else its
unfinished children end ``WorkflowDeleted``.

Why plain typed dicts, not the ``argo-workflows`` SDK models or ``hera``: both install from PyPI
here, but neither is a dependency of the controller or its image, and the Workflow is small and
mostly the Job's pod template copied over, so plain dicts (``Obj``, as the Job path uses) keep
the code smaller than converting to and from model classes.

Permissions, granted by the chart only with ``argo.enabled`` (``controller.rbac``): the controller's
``ARGO_USES`` (checked against this module's calls by tests/unit/controller/test_rbac.py), and in
each search's namespace the children's ServiceAccount's ``EXECUTOR_USES``: what argoexec v4's
``wait`` container does with the pod's token (``WorkflowTaskResult`` create and patch, upstream's
emissary executor Role; no ConfigMaps or Secrets, which only artifacts would need). Without
them, or without Argo's CRD, the first create is refused (403, or 404 for the missing
``workflows.argoproj.io``) and ``ArgoUnavailable`` ends the search with that reason and what to do.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller.jobs import (
    JOB_DELETED_GRACE_S,
    LABEL_EPISODE,
    LABEL_SEARCH,
    LABEL_STEP,
    TELLING_REASONS,
    TRAINER_COMMAND,
    Owner,
    _message_text,
    job_manifest,
)
from controller.kube import Kube, KubeError, Obj, Use, _plain
from epnas.errors import NOT_RETRIED
from epnas.executors.base import ChildOutcome, ChildRun, SearchStopped, exit_reason
from epnas.spec import SearchSpec

LOG = logging.getLogger("epnas.controller.argo")
GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "workflows"
WORKFLOWS = (GROUP, PLURAL)
ARGO_USES = frozenset({Use("create", *WORKFLOWS), Use("get", *WORKFLOWS), Use("patch", *WORKFLOWS)})
WORKFLOW_TASK_RESULTS = (GROUP, "workflowtaskresults")
EXECUTOR_USES = frozenset({Use("create", *WORKFLOW_TASK_RESULTS), Use("patch", *WORKFLOW_TASK_RESULTS)})
POLL_S = 1.0
DONE = ("Succeeded", "Failed", "Error")
# Argo's expression language: retry unless the last attempt's exit code is one that is never retried
RETRY_EXPRESSION = " && ".join(f"asInt(lastRetry.exitCode) != {code}" for code in NOT_RETRIED)
POD_FIELDS = (
    "securityContext",
    "nodeSelector",
    "tolerations",
    "affinity",
    "priorityClassName",
    "serviceAccountName",
    "activeDeadlineSeconds",
)


def workflow_name(search: str, episode: int, step: int) -> str:
    """``<search>-e<episode>-s<step>``, e.g. ``digits-quick-e000-s01``: deterministic, for adoption."""
    return f"{search}-e{episode:03d}-s{step:02d}"


def workflow_manifest(
    runs: list[ChildRun],
    *,
    spec: SearchSpec,
    owner: Owner,
    parallelism: int | None,
    command: list[str] = TRAINER_COMMAND,
) -> Obj:
    """The Workflow that trains one step's ``runs`` (pure; see the module docstring)."""
    first = runs[0]
    templates: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    pull_secrets: list[dict[str, Any]] = []
    for run in runs:
        job = job_manifest(run, spec=spec, owner=owner, command=command)
        pod = job["spec"]["template"]["spec"]
        container = {key: value for key, value in pod["containers"][0].items() if key != "name"}
        template: dict[str, Any] = {
            "name": run.child,
            "metadata": {"labels": dict(job["spec"]["template"]["metadata"]["labels"])},
            "container": container,
            "retryStrategy": {
                "limit": spec.trainer.backoff_limit,
                "retryPolicy": "Always",
                "expression": RETRY_EXPRESSION,
            },
        }
        template.update({key: pod[key] for key in POD_FIELDS if key in pod})
        templates.append(template)
        volumes, pull_secrets = pod["volumes"], pod.get("imagePullSecrets") or []
    dag = {"name": "step", "dag": {"tasks": [{"name": run.child, "template": run.child} for run in runs]}}
    workflow_spec: dict[str, Any] = {"entrypoint": "step", "templates": [dag, *templates], "volumes": volumes}
    if parallelism:
        workflow_spec["parallelism"] = parallelism
    if pull_secrets:
        workflow_spec["imagePullSecrets"] = pull_secrets
    job = job_manifest(first, spec=spec, owner=owner, command=command)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Workflow",
        "metadata": {
            "name": workflow_name(owner.name, first.episode, first.step),
            "namespace": owner.namespace,
            "labels": {LABEL_SEARCH: owner.name, LABEL_EPISODE: str(first.episode), LABEL_STEP: str(first.step)},
            "ownerReferences": job["metadata"]["ownerReferences"],
        },
        "spec": workflow_spec,
    }


# ---------------------------------------------------------------- reading Workflows (pure)


def _seconds(node: dict[str, Any]) -> float:
    start, end = node.get("startedAt"), node.get("finishedAt")
    if not start or not end:
        return 0.0
    parse = lambda text: datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    return max(0.0, (parse(end) - parse(start)).total_seconds())


class ArgoUnavailable(RuntimeError):
    """This installation cannot run Workflows: the controller may not create them (403: the chart
    without ``argo.enabled``) or the cluster has no Argo CRD (404). Not transient: the search fails
    with reason ``ArgoUnavailable`` and this message."""

    @classmethod
    def of(cls, err: KubeError, namespace: str) -> ArgoUnavailable:
        if err.status == 404:
            return cls(
                f"create workflows: 404: the cluster has no {PLURAL}.{GROUP} resource; install Argo Workflows "
                "(its CRDs and workflow-controller) or use executor: jobs"
            )
        return cls(
            f"create workflows: 403: the controller may not create Argo Workflows in namespace {namespace!r}; "
            "install the chart with --set argo.enabled=true (or use executor: jobs)"
        )


def child_outcomes(workflow: Obj) -> dict[str, ChildOutcome]:
    """The outcome of every child whose task node has ended, by child (pure).

    A task's node is the ``Retry`` node Argo makes for a template with a ``retryStrategy``; its
    children are the attempts' ``Pod`` nodes, whose ``outputs.exitCode`` is the trainer's."""
    status = workflow.get("status") or {}
    nodes: dict[str, dict[str, Any]] = status.get("nodes") or {}
    wanted = {t["name"] for t in (workflow.get("spec") or {}).get("templates") or [] if "container" in t}
    outcomes: dict[str, ChildOutcome] = {}
    for node in nodes.values():
        child = node.get("displayName")
        if not isinstance(child, str) or child not in wanted:
            continue
        if node.get("type") != "Retry" or node.get("phase") not in DONE:
            continue
        pods = sorted(
            (nodes[i] for i in node.get("children") or [] if i in nodes), key=lambda n: n.get("startedAt") or ""
        )
        attempts = max(1, len(pods))
        last = pods[-1] if pods else node
        if node["phase"] == "Succeeded":
            outcomes[child] = ChildOutcome(child, 0, "Completed", "", attempts, _seconds(node))
            continue
        code_text = (last.get("outputs") or {}).get("exitCode")
        code = int(code_text) if code_text not in (None, "") else None
        message = last.get("message") or node.get("message") or ""
        reason, detail = node["phase"], _message_text(message)
        if code in NOT_RETRIED:
            reason = exit_reason(code)
        else:
            reason = next((r for r in TELLING_REASONS if r in message), "Error" if code else reason)
        outcomes[child] = ChildOutcome(
            child, code, reason, detail or f"the Workflow node ended {node['phase']}", attempts, _seconds(node)
        )
    return outcomes


# ---------------------------------------------------------------- the executor


@dataclass(kw_only=True)
class ArgoExecutor:
    """Trains a step's ``ChildRun``s as one Workflow (``workflow_manifest``) and polls it; built
    with ``JobExecutor``'s keyword arguments, so the runner can pick either."""

    kube: Kube
    spec: SearchSpec
    owner: Owner
    parallelism: Callable[[], int | None]
    should_stop: Callable[[], bool]
    on_finished: Callable[[ChildOutcome], None]
    command: list[str] = field(default_factory=lambda: list(TRAINER_COMMAND))

    def submit(self, runs: list[ChildRun]) -> list[ChildOutcome]:
        if not runs:
            return []
        limit = self.parallelism()
        body = workflow_manifest(runs, spec=self.spec, owner=self.owner, parallelism=limit, command=self.command)
        name = body["metadata"]["name"]
        workflow = self._create(body)
        outcomes: dict[str, ChildOutcome] = {}
        while True:
            for child, outcome in child_outcomes(workflow).items():
                if child not in outcomes:
                    outcomes[child] = outcome
                    self.on_finished(outcome)
            if len(outcomes) == len(runs):
                return [outcomes[r.child] for r in runs]
            if self.should_stop():
                raise SearchStopped(self.owner.name)
            time.sleep(POLL_S)
            limit = self._follow_parallelism(name, limit)
            try:
                got = self._get(name)
            except KubeError:
                continue  # counted by Kube; poll again
            if got is None:
                self._deleted(runs, outcomes)
                continue
            workflow = got

    def _create(self, body: Obj) -> Obj:
        namespace, name = self.owner.namespace, body["metadata"]["name"]
        try:
            got = self.kube._call(
                Use("create", *WORKFLOWS),
                lambda: self.kube.custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, body, **_plain()
                ),
                ok=(409,),
            )
        except KubeError as err:
            if err.status in (403, 404):
                raise ArgoUnavailable.of(err, namespace) from err
            raise
        if got != 409:
            return got
        LOG.info("%s: adopting existing Workflow %s", self.owner.name, name)
        return self._get(name) or body

    def _get(self, name: str) -> Obj | None:
        got = self.kube._call(
            Use("get", *WORKFLOWS),
            lambda: self.kube.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.owner.namespace, PLURAL, name, **_plain()
            ),
            ok=(404,),
        )
        return None if got == 404 else got

    def _follow_parallelism(self, name: str, limit: int | None) -> int | None:
        """Patch the Workflow's parallelism when ``parallelism()`` changed (unset: no limit)."""
        now = self.parallelism()
        if now == limit:
            return limit
        patch = {"spec": {"parallelism": now}}
        try:
            self.kube._call(
                Use("patch", *WORKFLOWS),
                lambda: self.kube.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, self.owner.namespace, PLURAL, name, patch, **_plain()
                ),
                ok=(404,),
            )
        except KubeError:
            return limit  # try again at the next poll
        return now

    def _deleted(self, runs: list[ChildRun], outcomes: dict[str, ChildOutcome]) -> None:
        """The Workflow is gone before the step ended: the search's deletion, or someone else's."""
        deadline = time.monotonic() + JOB_DELETED_GRACE_S
        while not self.should_stop():
            if time.monotonic() >= deadline:
                for run in runs:
                    if run.child not in outcomes:
                        outcomes[run.child] = ChildOutcome(
                            run.child, None, "WorkflowDeleted", "the Workflow was deleted before it finished"
                        )
                        self.on_finished(outcomes[run.child])
                return
            time.sleep(0.1)
        raise SearchStopped(self.owner.name)
