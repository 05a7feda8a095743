"""One ``SearchLoop`` thread per ArchitectureSearch: the "do" side of the controller.

A ``SearchRunner`` owns one custom resource (by uid).  Its thread parses the spec, opens the
store, pins the spec in ``search.yaml`` (written once; on resume the stored one wins), runs
the loop with a ``JobExecutor``, and patches ``status`` after every step.  Everything the
search needs to resume lives in the store and the cluster, so the thread can die with the
process at any moment.

Why things happen where they do:

* The store's ``search.yaml`` is the source of truth: a spec edited while the controller was
  down is refused the same way as one edited while it runs.
* Status is patched from this thread only, except ``observe`` (spec changes) which takes the
  same lock, so the conditions list is never lost between two merge patches.
* The controller's own store credentials come from its environment (the Deployment's env from
  the same Secret); it never reads Secrets through the API.  So a search may only name a store
  the installation allows (``controller.tenancy.StorePolicy``), and its data lives at
  ``<uri>/<namespace>/<name>/<uid>`` (``search_location``).
* Transient failures (the API server or the store unreachable, 429, 5xx after the calls' own
  retries) never fail a search: the thread records a ``Degraded`` condition and an Event,
  waits (``RETRY_DELAYS_S``, growing to 5 minutes) and resumes the search from the store.
  Only permanent errors (an invalid spec, a refused store, 403/422 answers) end it as Failed.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from typing import Any, Literal

from controller import status as st
from controller.argo import ArgoExecutor, ArgoUnavailable
from controller.jobs import TRAINER_COMMAND, JobExecutor, Owner, job_name
from controller.kube import Kube, KubeError, Obj
from controller.metrics import ControllerMetrics
from controller.tenancy import StorePolicy, search_location
from epnas.checkpoint import SEARCH_FILE, pin_search, search_changes
from epnas.errors import SpecError
from epnas.executors.base import ChildOutcome
from epnas.search import SearchFailed, SearchLoop, SearchStopped, StepReport, child_id
from epnas.spec import MAX_NESTING, ArchitectureSearch, parse_search, with_trainer_defaults
from epnas.store import StoreError, open_store

LOG = logging.getLogger("epnas.controller")
COMPONENT = "epnas-controller"
RETRY_DELAYS_S = (5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0)  # then every 300 s, for as long as it takes
MAX_JOB_NAME = 63  # a Job's name is also its pods' job-name label value: a DNS label


class Transient(Exception):
    """A failure that waiting may fix; the runner resumes the search after a delay."""


def transient(err: BaseException) -> bool:
    """Whether ``err`` is worth waiting out (``KubeError``/``StoreError`` say so themselves)."""
    return isinstance(err, Transient) or bool(
        getattr(err, "transient", False) and isinstance(err, (KubeError, StoreError))
    )


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def document(obj: Obj) -> dict[str, Any]:
    """The CR as an ``ArchitectureSearch`` document: metadata trimmed to name and namespace
    (labels, annotations and server fields change without changing the search)."""
    meta = obj["metadata"]
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {"name": meta["name"], "namespace": meta.get("namespace")},
        "spec": obj.get("spec") or {},
    }


def too_deep(data: Any, limit: int = MAX_NESTING) -> str | None:
    """The field under which ``data`` nests deeper than ``limit`` levels (the document is level 1
    and every value counts, as ``epnas.spec.load_search`` counts a search file's YAML nodes),
    shortened to its first four keys; ``None`` when it does not.  Iterative: the API server keeps
    objects up to 10,000 levels deep, far past Python's recursion (the validation, the pinned
    ``search.yaml``).  A custom resource never passes through ``load_search``, so this is its
    nesting limit."""
    stack: list[tuple[Any, tuple[str, ...], int]] = [(data, (), 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > limit:
            head = ""
            for key in path[:4]:
                head += key if key.startswith("[") or not head else f".{key}"
            return head
        if isinstance(node, dict):
            stack.extend((value, (*path, str(key)), depth + 1) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, (*path, f"[{i}]"), depth + 1) for i, value in enumerate(node))
    return None


def job_name_problem(search: ArchitectureSearch) -> str | None:
    """Why the budget's last child (or its final training) would get a Job name over 63
    characters, else ``None``.  Names are ``<search>-[final-]eNNN-sNN-cNN`` and the numbers widen
    past 999 episodes, 99 steps or 99 branches: only a 40-character name with a huge budget gets
    there, and its last Job could not be created."""
    spec = search.spec
    child = child_id(spec.budget.episodes - 1, spec.steps_per_episode - 1, spec.budget.branches - 1)
    longest = job_name(search.name, f"final-{child}" if spec.final_training and spec.final_training.top else child)
    if len(longest) <= MAX_JOB_NAME:
        return None
    return (
        f"with this spec.budget its Job names reach {len(longest)} characters ({longest}), more than {MAX_JOB_NAME}: "
        f"shorten the name by {len(longest) - MAX_JOB_NAME}"
    )


def refused_message(refused: list[str]) -> str:
    """The ``SpecChangeRefused`` condition's message for the fields ``epnas.pinning`` refused."""
    return "spec changes after start are refused (the search keeps its original spec): " + ", ".join(refused)


class SearchRunner:
    """Runs (or resumes) one search in a thread; ``stop()`` ends it between steps or Job events."""

    def __init__(
        self,
        obj: Obj,
        *,
        kube: Kube,
        metrics: ControllerMetrics,
        trainer_command: list[str] = TRAINER_COMMAND,
        clock: Callable[[], str] = utc_now,
        store_policy: StorePolicy = StorePolicy(),
        trainer_defaults: dict[str, Any] | None = None,
        default_parallelism: int | None = None,
    ):
        meta = obj["metadata"]
        self.name, self.namespace, self.uid = meta["name"], meta["namespace"], meta["uid"]
        self.obj = obj
        self.kube = kube
        self.metrics = metrics
        self.trainer_command = trainer_command
        self.clock = clock
        self.store_policy = store_policy
        self.trainer_defaults = trainer_defaults or {}
        self.default_parallelism = default_parallelism  # the installation's (--default-parallelism)
        self.retries = 0
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.conditions: list[st.Condition] = list((obj.get("status") or {}).get("conditions") or [])
        self.generation = int(meta.get("generation") or 0)
        self.parallelism: int | None = (obj.get("spec") or {}).get("parallelism")
        self.pinned: ArchitectureSearch | None = None  # the search the loop runs (search.yaml's)
        self.phase: st.Phase = (obj.get("status") or {}).get("phase") or "Pending"
        self.start_time: str | None = (obj.get("status") or {}).get("startTime")
        self.degraded = False
        self.extend = threading.Event()  # the spec was extended while the search ran
        self.loop: SearchLoop | None = None
        self.thread = threading.Thread(target=self._main, name=f"search-{self.namespace}-{self.name}", daemon=True)

    # ------------------------------------------------------------ control (watch thread)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def step_parallelism(self) -> int | None:
        """Children of a step in flight at once: the search's ``spec.parallelism`` (live), else the
        installation's ``--default-parallelism``, else ``None`` (the whole step)."""
        return self.parallelism or self.default_parallelism

    def observe(self, obj: Obj) -> None:
        """A new version of the CR arrived while the search runs (``epnas.checkpoint.search_changes``
        decides, the rule ``pin_search`` applies when the search starts, locally and here):

        * only ``spec.parallelism`` changed: taken live;
        * an extension (``budget.episodes`` up, ``maxChildren``, ``finalTraining`` …): recorded;
          when the current run ends the search continues from its checkpoint under it;
        * anything else: refused (condition ``SpecChangeRefused`` and a Warning Event naming the fields).
        """
        self.obj = obj
        self.parallelism = (obj.get("spec") or {}).get("parallelism")
        generation = int(obj["metadata"].get("generation") or 0)
        if generation == self.generation or self.pinned is None:
            return
        extensions: list[str]
        refused: list[str]
        try:
            live = self._parse(obj)
        except SpecError as err:
            extensions, refused = [], [f"invalid: {err}"]
        else:
            extensions, refused = search_changes(self.pinned, live)
        pending = [f for f in extensions if f != "spec.parallelism"]
        with self.lock:
            if refused:
                self.generation = generation
                message = refused_message(refused)
                self.conditions = st.set_condition(
                    self.conditions,
                    kind="SpecChangeRefused",
                    status=True,
                    reason=st.Reason.SPEC_CHANGED,
                    message=message,
                    now=self.clock(),
                )
                self._event("Warning", "SpecChangeRefused", message)
                self._patch({"observedGeneration": generation})
            elif pending:  # observedGeneration moves when the extension is applied
                self.extend.set()
                message = (
                    f"extension accepted ({', '.join(pending)}): the search continues under it from its checkpoint"
                )
                self.conditions = st.set_condition(
                    self.conditions,
                    kind="SpecChangeRefused",
                    status=False,
                    reason=st.Reason.EXTENDED,
                    message=message,
                    now=self.clock(),
                )
                self._patch({})
            else:
                self.generation = generation
                self.conditions = st.set_condition(
                    self.conditions,
                    kind="SpecChangeRefused",
                    status=False,
                    reason=st.Reason.SPEC_UNCHANGED,
                    message="only live fields changed",
                    now=self.clock(),
                )
                self._patch({"observedGeneration": generation})

    def _parse(self, obj: Obj) -> ArchitectureSearch:
        """The CR as a search, its trainer completed from the installation's defaults (``--trainer-defaults``)."""
        doc = document(obj)
        deep = too_deep(doc)
        if deep is not None:
            raise SpecError.one(deep, f"nested deeper than {MAX_NESTING} levels")
        return with_trainer_defaults(parse_search(doc), self.trainer_defaults)

    # ------------------------------------------------------------ the thread

    def _main(self) -> None:
        self.metrics.searches_running.inc()
        try:
            while True:
                try:
                    self._run()
                    if not self.extend.is_set() or self.stop_event.is_set():
                        return
                    self.extend.clear()  # extended while it ran: continue under the new budget
                    self.generation = int(self.obj["metadata"].get("generation") or 0)
                    continue
                except SearchStopped:
                    LOG.info("%s/%s: stopped", self.namespace, self.name)
                    return
                except ArgoUnavailable as err:
                    LOG.error("%s/%s: %s", self.namespace, self.name, err)
                    return self._fail(st.Reason.ARGO_UNAVAILABLE, str(err))
                except Exception as err:  # the controller keeps serving the others
                    if not transient(err):
                        LOG.exception("%s/%s: search failed", self.namespace, self.name)
                        return self._fail(st.Reason.LOOP_ERROR, f"{type(err).__name__}: {err}")
                    if not self._wait_out(err):
                        return
        finally:
            self.metrics.searches_running.dec()

    def _wait_out(self, err: BaseException) -> bool:
        """Record a transient failure and wait before resuming; ``False`` when stopped meanwhile."""
        delay = RETRY_DELAYS_S[min(self.retries, len(RETRY_DELAYS_S) - 1)]
        self.retries += 1
        kind = "store" if isinstance(err, StoreError) else "kubernetes"
        self.metrics.search_retries.labels(reason=kind).inc()
        message = f"transient {kind} error, resuming in {delay:.0f} s (retry {self.retries}): {err}"[:900]
        LOG.warning("%s/%s: %s", self.namespace, self.name, message)
        with self.lock:
            self.conditions = st.set_condition(
                self.conditions,
                kind="Degraded",
                status=True,
                reason=st.Reason.TRANSIENT_ERROR,
                message=message,
                now=self.clock(),
            )
            self.degraded = True
            self._patch({})
        self._event("Warning", "TransientError", message)
        return not self.stop_event.wait(delay)

    def _run(self) -> None:
        if self.phase != "Running":  # a restarted controller or a resumed search stays Running
            with self.lock:
                self._set_phase("Pending", st.Reason.STARTED, "starting", observed=True)
        try:
            search = self._parse(self.obj)
        except SpecError as err:
            return self._fail(st.Reason.INVALID_SPEC, "; ".join(str(p) for p in err.problems))
        too_long = job_name_problem(search)
        if too_long:
            return self._fail(st.Reason.INVALID_SPEC, f"metadata.name: {too_long}")
        store_spec = search.spec.store
        if not store_spec.uri:
            return self._fail(st.Reason.STORE_MISSING, "spec.store.uri is required in a cluster (s3://bucket/prefix)")
        refusal = self.store_policy.refusal(store_spec.uri, store_spec.endpoint)
        if refusal:
            return self._fail(st.Reason.STORE_NOT_ALLOWED, refusal)
        search_uri = search_location(
            store_spec.uri, namespace=self.namespace, name=self.name, uid=self.uid, resume_uid=store_spec.resume_uid
        )
        try:
            store = open_store(search_uri, endpoint=store_spec.endpoint, region=store_spec.region)
            if store_spec.resume_uid and not store.exists(SEARCH_FILE):
                return self._fail(
                    st.Reason.NOTHING_TO_RESUME, f"spec.store.resumeUid: no search of that uid at {search_uri}"
                )
            pinned = pin_search(store, search)
            search, refused, extensions = pinned.search, pinned.refused, pinned.extensions
        except StoreError as err:
            self.metrics.store_errors.labels(op="open").inc()
            if err.transient:
                raise
            return self._fail(st.Reason.STORE_UNAVAILABLE, f"store {search_uri}: {err}")
        self.pinned = search
        # spec.executor: each child a Job (default), or each step one Argo Workflow; the loop cannot tell
        executor_class = ArgoExecutor if search.spec.executor == "argo" else JobExecutor
        executor = executor_class(
            kube=self.kube,
            spec=search.spec,
            owner=Owner(self.name, self.namespace, self.uid),
            parallelism=self.step_parallelism,
            should_stop=self.stop_event.is_set,
            on_finished=self._child_finished,
            command=self.trainer_command,
        )
        loop = SearchLoop(
            search,
            store=store,
            store_uri=search_uri,
            executor=executor,
            on_step=self._on_step,
            should_stop=self.stop_event.is_set,
        )
        self.loop = loop
        with self.lock:
            if refused:
                message = refused_message(refused)
                self.conditions = st.set_condition(
                    self.conditions,
                    kind="SpecChangeRefused",
                    status=True,
                    reason=st.Reason.SPEC_CHANGED,
                    message=message,
                    now=self.clock(),
                )
            elif extensions:
                message = f"extended ({', '.join(extensions)}): continuing from the checkpoint"
                self.conditions = st.set_condition(
                    self.conditions,
                    kind="SpecChangeRefused",
                    status=False,
                    reason=st.Reason.EXTENDED,
                    message=message,
                    now=self.clock(),
                )
            self._set_phase("Running", st.Reason.STARTED, f"search running, store {search_uri}", observed=True)
        if extensions:
            self._event(
                "Normal", "Extended", f"search extended ({', '.join(extensions)}); continuing from its checkpoint"
            )
        self._event("Normal", "Started", f"search started (store {search_uri})")
        try:
            summary = loop.run()
        except StoreError as err:
            self.metrics.store_errors.labels(op="loop").inc()
            if err.transient:
                raise
            return self._fail(st.Reason.STORE_UNAVAILABLE, str(err))
        except SearchFailed as err:
            if self.stop_event.is_set():  # its Jobs went with the deleted search: stopped, not failed
                raise SearchStopped(self.name) from None
            self._policy_metrics(loop)
            return self._fail(st.Reason.TOO_MANY_FAILURES, str(err))
        self._policy_metrics(loop)
        if self.extend.is_set():
            return  # not Succeeded yet: the thread continues under the extended spec
        with self.lock:
            self._recovered()
            feasible = summary.get("bestFeasible")
            if feasible:
                message = (
                    f"search finished: best feasible child {feasible['child']} ({feasible['hash']}), "
                    f"validation accuracy {feasible['valAccuracy']:.4f}"
                )
                self.conditions = st.set_condition(
                    self.conditions,
                    kind="NoFeasibleChild",
                    status=False,
                    reason=st.Reason.FEASIBLE_CHILD_FOUND,
                    message=f"{summary['feasibleCount']} children met every constraint",
                    now=self.clock(),
                )
            else:
                message = "search finished without a feasible child: no child met every constraint"
                self.conditions = st.set_condition(
                    self.conditions,
                    kind="NoFeasibleChild",
                    status=True,
                    reason=st.Reason.NO_FEASIBLE_CHILD,
                    message=st.no_feasible_message(summary),
                    now=self.clock(),
                )
            # REASON in `kubectl get nas` reads NoFeasibleChild when there is no model to ship
            reason = st.Reason.COMPLETED if feasible else st.Reason.NO_FEASIBLE_CHILD
            self._set_phase("Succeeded", reason, message, fields=st.from_summary(summary))
        if not feasible:
            self._event("Warning", "NoFeasibleChild", st.no_feasible_message(summary))
        self._event("Normal", "Succeeded", message)

    def _on_step(self, report: StepReport) -> None:
        if self.stop_event.is_set():
            return
        self.metrics.step_done(namespace=self.namespace, search=self.name, summary=report.summary)
        for record in report.records:
            self.metrics.children.labels(namespace=self.namespace, search=self.name, status=record.status).inc()
        self._policy_metrics(self.loop)
        with self.lock:
            self._recovered()
            message = f"episode {report.episode} step {report.step} done"
            self._set_phase("Running", st.Reason.STEP_COMPLETED, message, fields=st.from_summary(report.summary))
        self._event("Normal", "StepCompleted", f"{message}: {len(report.records)} children")
        for record in report.records:
            if record.status == "failed":
                self._event(
                    "Warning", "ChildFailed", f"{record.child}: exit code {record.exit_code}, {record.reason}"[:500]
                )

    def _recovered(self) -> None:
        """After a transient error: the search went on; the caller holds ``self.lock``."""
        if self.degraded:
            self.conditions = st.set_condition(
                self.conditions,
                kind="Degraded",
                status=False,
                reason=st.Reason.RECOVERED,
                message=f"the search went on after {self.retries} transient errors",
                now=self.clock(),
            )
            self.degraded, self.retries = False, 0

    def _policy_metrics(self, source: Any) -> None:
        update = getattr(source, "last_update", None)
        if update:
            self.metrics.policy_updated(namespace=self.namespace, search=self.name, update=update)

    def _child_finished(self, outcome: ChildOutcome) -> None:
        self.metrics.child_duration.labels(namespace=self.namespace, search=self.name).observe(outcome.seconds)

    # ------------------------------------------------------------ status and events

    def _fail(self, reason: st.Reason, message: str) -> None:
        LOG.warning("%s/%s: failed: %s: %s", self.namespace, self.name, reason.value, message)
        with self.lock:
            self._set_phase("Failed", reason, message, observed=True)
        self._event("Warning", "Failed", f"{reason.value}: {message}")

    def _set_phase(
        self, phase: st.Phase, reason: st.Reason, message: str, *, fields: dict | None = None, observed: bool = False
    ) -> None:
        """Patch phase, conditions and ``fields``; the caller holds ``self.lock``."""
        self.phase = phase
        now = self.clock()
        self.conditions = st.phase_conditions(self.conditions, phase=phase, reason=reason, message=message, now=now)
        patch: dict[str, Any] = {
            "phase": phase,
            "reason": str(getattr(reason, "value", reason)),
            "message": message,
            **(fields or {}),
        }
        if phase == "Running":
            if self.start_time is None:
                self.start_time = patch["startTime"] = now
            patch["completionTime"] = None  # an extended search runs again (merge patch: null removes)
        elif phase in ("Succeeded", "Failed"):
            patch["completionTime"] = now
        if observed or phase != "Pending":
            patch["observedGeneration"] = self.generation
        self._patch(patch)

    def _patch(self, fields: dict[str, Any]) -> None:
        try:
            self.kube.patch_search_status(
                namespace=self.namespace, name=self.name, status={**fields, "conditions": self.conditions}
            )
        except KubeError as err:
            LOG.warning("%s/%s: status patch failed: %s", self.namespace, self.name, err)

    def _event(self, event_type: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        try:
            self.kube.create_event(
                involved=self.obj, event_type=event_type, reason=reason, message=message, component=COMPONENT
            )
        except KubeError as err:
            LOG.warning("%s/%s: event %s not recorded: %s", self.namespace, self.name, reason, err)
