"""One Kubernetes Job per child: the manifest (pure) and ``JobExecutor`` (the ``Executor`` protocol).

``job_manifest`` decides what a child's Job looks like; ``JobExecutor.submit`` creates the
Jobs of a step and waits for them with a watch.  Trainer exit codes (DESIGN.md): 0 done,
2 invalid input and 3 diverged (``podFailurePolicy`` fails the Job at once), anything else is retried by
the Job's ``backoffLimit``.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from controller.kube import Gone, Kube, KubeError, Obj
from epnas.errors import NOT_RETRIED
from epnas.executors.base import ChildOutcome, ChildRun, SearchStopped, exit_reason
from epnas.spec import API_VERSION, KIND, SearchSpec

LOG = logging.getLogger("epnas.controller.jobs")
LABEL_SEARCH = "epnas.io/search"
LABEL_EPISODE = "epnas.io/episode"
LABEL_STEP = "epnas.io/step"
LABEL_CHILD = "epnas.io/child"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"  # Kueue's LocalQueue label: the Job waits suspended until admitted
TERMINATION_LOG = "/dev/termination-log"
TRAINER_COMMAND = ["python", "-m", "child_trainer"]
RUN_AS_USER = 65532
CREATE_WORKERS = 8
WATCH_WINDOW_S = 10
JOB_DELETED_GRACE_S = 5.0  # how long a deleted Job waits for its search's deletion to arrive
STUCK_CHECK_S = 10.0  # how often the wait looks for pods stuck before their trainer could start
# a container waiting for one of these will not start by itself (a wrong image, a missing Secret)
STUCK_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}
)


@dataclass(frozen=True)
class Owner:
    """The ArchitectureSearch that owns the Jobs."""

    name: str
    namespace: str
    uid: str


def job_name(search: str, child: str) -> str:
    """``<search>-<child>``, e.g. ``digits-quick-e000-s01-c02``: deterministic, so a restarted
    controller finds the Job instead of creating a twin (search names are ≤ 40 characters)."""
    return f"{search}-{child}"


def step_selector(search: str, episode: int | None = None, step: int | None = None) -> str:
    """The label selector of a search's Jobs (optionally one step's)."""
    parts = [f"{LABEL_SEARCH}={search}"]
    if episode is not None:
        parts.append(f"{LABEL_EPISODE}={episode}")
    if step is not None:
        parts.append(f"{LABEL_STEP}={step}")
    return ",".join(parts)


def trainer_args(run: ChildRun, *, endpoint: str | None, device: str) -> list[str]:
    """The trainer's arguments; the termination log path comes through ``$(EPNAS_TERMINATION_LOG)``,
    which the container env sets to ``/dev/termination-log`` (a test node agent overrides it)."""
    return run.trainer_args(termination_log="$(EPNAS_TERMINATION_LOG)", endpoint=endpoint, device=device)


def job_manifest(run: ChildRun, *, spec: SearchSpec, owner: Owner, command: list[str] = TRAINER_COMMAND) -> Obj:
    """The batch/v1 Job that trains ``run`` (pure).

    Store credentials only ever appear as ``secretKeyRef`` to ``spec.store.secretName``;
    ``nvidia.com/gpu`` limits (and ``--device cuda``) only when ``spec.trainer.gpu > 0``,
    else ``--device cpu``.  With ``spec.trainer.queueName`` the Job is created suspended with
    Kueue's queue label, and Kueue unsuspends it once the LocalQueue's ClusterQueue admits it
    (the time limit is the pod's, so waiting for admission does not count).
    """
    trainer = spec.trainer
    labels = {
        LABEL_SEARCH: owner.name,
        LABEL_EPISODE: str(run.episode),
        LABEL_STEP: str(run.step),
        LABEL_CHILD: run.child,
    }
    resources: dict[str, Any] = {
        "requests": {"cpu": trainer.cpu, "memory": trainer.memory},
        "limits": {"memory": trainer.memory},
    }
    if trainer.gpu > 0:
        resources["limits"]["nvidia.com/gpu"] = str(trainer.gpu)
        resources["requests"]["nvidia.com/gpu"] = str(trainer.gpu)
    container = {
        "name": "trainer",
        "image": trainer.image,
        "command": list(command),
        "args": trainer_args(run, endpoint=spec.store.endpoint, device="cuda" if trainer.gpu > 0 else "cpu"),
        "env": _env(spec),
        "resources": resources,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # per attempt, from the pod's start: time spent queued for a (GPU) node does not count
        "activeDeadlineSeconds": trainer.active_deadline_seconds,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if trainer.node_selector:
        pod_spec["nodeSelector"] = dict(trainer.node_selector)
    if trainer.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in trainer.tolerations]
    if trainer.affinity:
        pod_spec["affinity"] = dict(trainer.affinity)
    if trainer.priority_class_name:
        pod_spec["priorityClassName"] = trainer.priority_class_name
    if trainer.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in trainer.image_pull_secrets]
    if trainer.service_account_name:
        pod_spec["serviceAccountName"] = trainer.service_account_name
    job_labels = dict(labels)
    job_spec: dict[str, Any] = {}
    if trainer.queue_name:
        job_labels[LABEL_QUEUE] = trainer.queue_name
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(owner.name, run.child),
            "namespace": owner.namespace,
            "labels": job_labels,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": owner.name,
                    "uid": owner.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            **job_spec,
            "backoffLimit": trainer.backoff_limit,
            "ttlSecondsAfterFinished": trainer.ttl_seconds_after_finished,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": list(NOT_RETRIED)},
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


def _env(spec: SearchSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "EPNAS_TERMINATION_LOG", "value": TERMINATION_LOG}]
    store = spec.store
    if store.secret_name:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": store.secret_name, "key": key}}})
    if store.endpoint:
        env.append({"name": "EPNAS_S3_ENDPOINT", "value": store.endpoint})
    if store.region:
        env.append({"name": "AWS_REGION", "value": store.region})
    return env


# ---------------------------------------------------------------- reading Jobs (pure)


def finished(job: Obj) -> str | None:
    """``"Complete"`` or ``"Failed"`` once the Job controller says so, else ``None``."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"]
    return None


def failure_reason(job: Obj) -> str:
    """The Failed condition's reason: BackoffLimitExceeded, PodFailurePolicy, DeadlineExceeded, ..."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return condition.get("reason") or "Failed"
    return "Failed"


def last_termination(pods: list[Obj]) -> tuple[int | None, str, str]:
    """``(exit code, termination message, reason)`` of the most recently started terminated
    trainer container; the reason is the pod's (``DeadlineExceeded``, ``Evicted``), else the
    container's (``OOMKilled``, ``Error`` …)."""
    best: tuple[str, int | None, str, str] | None = None
    for pod in pods:
        pod_reason = (pod.get("status") or {}).get("reason") or ""
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated")
            if not terminated:
                continue
            key = terminated.get("startedAt") or ""
            if best is None or key >= best[0]:
                best = (
                    key,
                    terminated.get("exitCode"),
                    terminated.get("message") or "",
                    pod_reason or terminated.get("reason") or "",
                )
    return (best[1], best[2], best[3]) if best else (None, "", "")


def stuck_pods(pods: list[Obj], *, now: datetime.datetime, deadline_s: float) -> dict[str, tuple[str, str]]:
    """``{job name: (reason, detail)}`` for the pods (pure) whose container has waited with one of
    ``STUCK_REASONS`` for ``deadline_s`` or more since the pod was scheduled onto a node (time
    queued for a node does not count: a pod not yet scheduled is never stuck)."""
    out: dict[str, tuple[str, str]] = {}
    for pod in pods:
        status = pod.get("status") or {}
        job = ((pod.get("metadata") or {}).get("labels") or {}).get("job-name")
        scheduled = next(
            (
                c.get("lastTransitionTime")
                for c in status.get("conditions") or []
                if c.get("type") == "PodScheduled" and c.get("status") == "True"
            ),
            None,
        )
        if not job or not scheduled or status.get("phase") != "Pending":
            continue
        waited = (now - _time(scheduled)).total_seconds()
        for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS and waited >= deadline_s:
                message = waiting.get("message") or waiting["reason"]
                out[job] = (
                    waiting["reason"],
                    f"the pod waited {waited:.0f} s on its node in {waiting['reason']} ({message}); its Job was deleted",
                )
                break
    return out


# kubelet reasons that say more than the Job's own (BackoffLimitExceeded): kept as the child's reason
TELLING_REASONS = frozenset({"OOMKilled", "DeadlineExceeded", "Evicted", "ContainerCannotRun", "StartError"})


def job_seconds(job: Obj) -> float:
    status = job.get("status") or {}
    start, end = status.get("startTime"), status.get("completionTime")
    if not start:
        return 0.0
    end_time = _time(end) if end else _latest_condition_time(status) or _time(start)
    return max(0.0, (end_time - _time(start)).total_seconds())


def _latest_condition_time(status: dict) -> datetime.datetime | None:
    times = [_time(c["lastTransitionTime"]) for c in status.get("conditions") or [] if c.get("lastTransitionTime")]
    return max(times) if times else None


def _time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")


def outcome_of(child: str, job: Obj, pods: list[Obj]) -> ChildOutcome:
    """A finished Job as the loop's ``ChildOutcome`` (pure); ``pods`` are read only for failed Jobs."""
    status = job.get("status") or {}
    attempts = int(status.get("failed") or 0) + int(status.get("succeeded") or 0)
    seconds = job_seconds(job)
    if finished(job) == "Complete":
        return ChildOutcome(child, 0, "Completed", "", max(1, attempts), seconds)
    code, message, kubelet_reason = last_termination(pods)
    detail = _message_text(message)
    reason = failure_reason(job)
    if code in NOT_RETRIED:  # the trainer's own verdict, the same reason as on one machine
        reason, detail = exit_reason(code), f"{detail} (Job {reason})" if detail else f"the Job ended {reason}"
    elif kubelet_reason in TELLING_REASONS:
        reason, detail = kubelet_reason, detail or f"the last attempt ended {kubelet_reason} ({reason})"
    return ChildOutcome(child, code, reason, detail, max(1, attempts), seconds)


def _message_text(message: str) -> str:
    """The trainer's termination summary is JSON; keep its message (never credentials: the trainer redacts)."""
    try:
        data = json.loads(message)
    except ValueError:
        return message.strip()[-500:]
    if isinstance(data, dict):
        return str(data.get("message") or data.get("reason") or "")[-500:]
    return ""


# ---------------------------------------------------------------- the executor


class JobExecutor:
    """Trains each ``ChildRun`` as a Job (``job_manifest``) and waits with a watch on the step's Jobs.

    * At most ``parallelism()`` Jobs of a step exist unfinished at once (read before every
      creation, so a live change of ``spec.parallelism`` applies at once); creations go
      through a small thread pool.
    * A 409 on create adopts the existing Job (a restarted controller): never a twin.
    * The wait lists the step's Jobs once, then watches from that resourceVersion, resuming
      from the last one it saw; a 410 Gone relists.  Each watch lasts ``WATCH_WINDOW_S`` at
      most, so ``should_stop()`` is checked at least that often; a Job event (the garbage
      collector deleting a deleted search's Jobs) wakes it sooner.  ``SearchStopped`` is raised
      when it returns true.
    * ``on_finished(outcome)`` is called once per child as its Job ends (metrics).
    """

    def __init__(
        self,
        *,
        kube: Kube,
        spec: SearchSpec,
        owner: Owner,
        parallelism: Callable[[], int | None],
        should_stop: Callable[[], bool],
        on_finished: Callable[[ChildOutcome], None],
        command: list[str] = TRAINER_COMMAND,
    ):
        self.kube = kube
        self.spec = spec
        self.owner = owner
        self.parallelism = parallelism
        self.should_stop = should_stop
        self.on_finished = on_finished
        self.command = command

    def submit(self, runs: list[ChildRun]) -> list[ChildOutcome]:
        if not runs:
            return []
        selector = step_selector(self.owner.name, runs[0].episode, runs[0].step)
        by_name = {job_name(self.owner.name, r.child): r for r in runs}
        waiting = list(runs)
        created: set[str] = set()
        outcomes: dict[str, ChildOutcome] = {}
        jobs, version = self.kube.list_jobs(namespace=self.owner.namespace, selector=selector)
        known = {j["metadata"]["name"]: j for j in jobs if j["metadata"]["name"] in by_name}
        created.update(known)
        if known:
            LOG.info(
                "%s: adopting %d existing Jobs of episode %d step %d",
                self.owner.name,
                len(known),
                runs[0].episode,
                runs[0].step,
            )
        waiting = [r for r in waiting if job_name(self.owner.name, r.child) not in known]
        for job in known.values():
            self._settle(job, by_name, outcomes)
        next_stuck_check = time.monotonic() + STUCK_CHECK_S
        with ThreadPoolExecutor(max_workers=CREATE_WORKERS, thread_name_prefix=f"jobs-{self.owner.name}") as pool:
            while len(outcomes) < len(runs):
                if self.should_stop():
                    raise SearchStopped(self.owner.name)
                waiting = self._create_more(pool, waiting, created, outcomes, known, by_name)
                if time.monotonic() >= next_stuck_check:
                    self._fail_stuck(selector, by_name, outcomes)
                    next_stuck_check = time.monotonic() + STUCK_CHECK_S
                try:
                    version = self._watch_once(
                        selector, version, by_name, known, outcomes, more_to_create=bool(waiting)
                    )
                except Gone:
                    jobs, version = self.kube.list_jobs(namespace=self.owner.namespace, selector=selector)
                    for job in jobs:
                        if job["metadata"]["name"] in by_name:
                            known[job["metadata"]["name"]] = job
                            self._settle(job, by_name, outcomes)
                except KubeError:
                    time.sleep(1.0)  # counted by Kube; resume from the same version
        return [outcomes[r.child] for r in runs]

    def _create_more(self, pool, waiting, created, outcomes, known, by_name) -> list[ChildRun]:
        """Create Jobs up to the parallelism limit; returns the runs still waiting for a slot."""
        limit = self.parallelism() or len(by_name)
        running = len(created) - len([n for n in created if by_name[n].child in outcomes])
        slots = max(0, limit - running)
        batch, rest = waiting[:slots], waiting[slots:]
        for run, job in zip(batch, pool.map(self._create, batch)):
            name = job_name(self.owner.name, run.child)
            created.add(name)
            known[name] = job
            self._settle(job, by_name, outcomes)
        return rest

    def _create(self, run: ChildRun) -> Obj:
        body = job_manifest(run, spec=self.spec, owner=self.owner, command=self.command)
        job = self.kube.create_job(namespace=self.owner.namespace, body=body)
        if job is None:  # 409: a Job of that name exists (a restarted controller): adopt it
            LOG.info("%s: adopting existing Job %s", self.owner.name, body["metadata"]["name"])
            job = self.kube.read_job(namespace=self.owner.namespace, name=body["metadata"]["name"]) or body
        return job

    def _watch_once(self, selector: str, version: str, by_name, known, outcomes, *, more_to_create: bool) -> str:
        events = self.kube.watch_jobs(
            namespace=self.owner.namespace, selector=selector, resource_version=version, timeout_s=WATCH_WINDOW_S
        )
        for event in events:
            job = event["object"]
            version = job["metadata"].get("resourceVersion", version)
            name = job["metadata"].get("name")
            if event["type"] == "BOOKMARK" or name not in by_name:
                continue
            known[name] = job
            before = len(outcomes)
            if event["type"] == "DELETED" and by_name[name].child not in outcomes and not finished(job):
                if self._stopping_soon():
                    raise SearchStopped(self.owner.name)
                self._finish(
                    ChildOutcome(by_name[name].child, None, "JobDeleted", "the Job was deleted before it finished"),
                    outcomes,
                )
            else:
                self._settle(job, by_name, outcomes)
            if self.should_stop():
                raise SearchStopped(self.owner.name)
            if more_to_create and len(outcomes) > before:
                break  # a Job ended and others wait for a slot: create them before watching on
        return version

    def _fail_stuck(self, selector: str, by_name: dict[str, ChildRun], outcomes: dict[str, ChildOutcome]) -> None:
        """Fail (and delete the Jobs of) the step's children whose pods are stuck (``stuck_pods``):
        a wrong image or a missing Secret fails fast with its reason instead of holding the step."""
        pods = self.kube.list_pods(namespace=self.owner.namespace, selector=selector)
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        for name, (reason, detail) in stuck_pods(
            pods, now=now, deadline_s=self.spec.trainer.start_deadline_seconds
        ).items():
            run = by_name.get(name)
            if run is None or run.child in outcomes:
                continue
            LOG.warning("%s: %s: %s", self.owner.name, run.child, detail)
            self.kube.delete_job(namespace=self.owner.namespace, name=name)
            self._finish(ChildOutcome(run.child, None, reason, detail), outcomes)

    def _stopping_soon(self) -> bool:
        """Whether the search is being stopped, waiting up to ``JOB_DELETED_GRACE_S`` for it.

        An unfinished Job that disappears was most likely collected because its search was
        deleted, and the garbage collector's Job events can arrive before the controller's
        watch delivers the search's own deletion: a child is recorded ``JobDeleted`` only
        when no stop follows within the grace."""
        deadline = time.monotonic() + JOB_DELETED_GRACE_S
        while not self.should_stop():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def _settle(self, job: Obj, by_name: dict[str, ChildRun], outcomes: dict[str, ChildOutcome]) -> None:
        run = by_name[job["metadata"]["name"]]
        state = finished(job)
        if state is None or run.child in outcomes:
            return
        pods = []
        if state == "Failed":
            pods = self.kube.list_pods(namespace=self.owner.namespace, selector=f"job-name={job['metadata']['name']}")
        self._finish(outcome_of(run.child, job, pods), outcomes)

    def _finish(self, outcome: ChildOutcome, outcomes: dict[str, ChildOutcome]) -> None:
        outcomes[outcome.child] = outcome
        self.on_finished(outcome)
