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
  the same Secret); it never reads Secrets through the API.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from epnas.checkpoint import SEARCH_FILE
from epnas.errors import SpecError
from epnas.executors.base import ChildOutcome
from epnas.search import SearchFailed, SearchLoop, SearchStopped, StepReport
from epnas.spec import ArchitectureSearch, parse_search
from epnas.store import Store, StoreError, StoreNotFound, join_uri, open_store

from controller import status as st
from controller.jobs import TRAINER_COMMAND, JobExecutor, Owner
from controller.kube import Kube, KubeError, Obj
from controller.metrics import Metrics

LOG = logging.getLogger("epnas.controller")
COMPONENT = "epnas-controller"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def document(obj: Obj) -> dict[str, Any]:
    """The CR as an ``ArchitectureSearch`` document: metadata trimmed to name and namespace
    (labels, annotations and server fields change without changing the search)."""
    meta = obj["metadata"]
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": {"name": meta["name"], "namespace": meta.get("namespace")},
            "spec": obj.get("spec") or {}}


def resolved_spec(search: ArchitectureSearch) -> dict[str, Any]:
    return search.spec.model_dump(mode="json", by_alias=True)


class SearchRunner:
    """Runs (or resumes) one search in a thread; ``stop()`` ends it between steps or Job events."""

    def __init__(self, obj: Obj, *, kube: Kube, metrics: Metrics, trainer_command: list[str] = TRAINER_COMMAND,
                 clock: Callable[[], str] = utc_now):
        meta = obj["metadata"]
        self.name, self.namespace, self.uid = meta["name"], meta["namespace"], meta["uid"]
        self.obj = obj
        self.kube = kube
        self.metrics = metrics
        self.trainer_command = trainer_command
        self.clock = clock
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.conditions: list[st.Condition] = list((obj.get("status") or {}).get("conditions") or [])
        self.generation = int(meta.get("generation") or 0)
        self.parallelism: int | None = (obj.get("spec") or {}).get("parallelism")
        self.pinned: dict[str, Any] | None = None  # the resolved spec the loop runs with
        self.phase: st.Phase = "Pending"
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

    def observe(self, obj: Obj) -> None:
        """A new version of the CR arrived: take ``spec.parallelism`` live, refuse any other change."""
        self.obj = obj
        self.parallelism = (obj.get("spec") or {}).get("parallelism")
        generation = int(obj["metadata"].get("generation") or 0)
        if generation == self.generation or self.pinned is None:
            return
        self.generation = generation
        try:
            live = resolved_spec(parse_search(document(obj)))
        except SpecError as err:
            refused = [f"invalid: {err}"]
        else:
            refused = st.refused_changes(self.pinned, live)
        with self.lock:
            if refused:
                message = "spec changes after start are refused (the search keeps its original spec): " + ", ".join(refused)
                self.conditions = st.set_condition(self.conditions, kind="SpecChangeRefused", status=True, reason=st.Reason.SPEC_CHANGED, message=message, now=self.clock())
                self._event("Warning", "SpecChangeRefused", message)
            else:
                self.conditions = st.set_condition(self.conditions, kind="SpecChangeRefused", status=False, reason=st.Reason.SPEC_UNCHANGED, message="only live fields changed", now=self.clock())
            self._patch({"observedGeneration": generation})

    # ------------------------------------------------------------ the thread

    def _main(self) -> None:
        self.metrics.searches_running.inc()
        try:
            self._run()
        except SearchStopped:
            LOG.info("%s/%s: stopped", self.namespace, self.name)
        except Exception as err:  # the controller keeps serving the others
            LOG.exception("%s/%s: search failed", self.namespace, self.name)
            self._fail(st.Reason.LOOP_ERROR, f"{type(err).__name__}: {err}")
        finally:
            self.metrics.searches_running.dec()

    def _run(self) -> None:
        with self.lock:
            self._set_phase("Pending", st.Reason.STARTED, "starting", observed=True)
        try:
            search = parse_search(document(self.obj))
        except SpecError as err:
            return self._fail(st.Reason.INVALID_SPEC, "; ".join(str(p) for p in err.problems))
        if not search.spec.store.uri:
            return self._fail(st.Reason.STORE_MISSING, "spec.store.uri is required in a cluster (s3://bucket/prefix)")
        search_uri = join_uri(search.spec.store.uri, search.name)
        try:
            store = open_store(search_uri, endpoint=search.spec.store.endpoint, region=search.spec.store.region)
            search, refused = self._pin(store, search)
        except StoreError as err:
            self.metrics.store_errors.labels(op="open").inc()
            return self._fail(st.Reason.STORE_UNAVAILABLE, f"store {search_uri}: {err}")
        self.pinned = resolved_spec(search)
        executor = JobExecutor(
            kube=self.kube, spec=search.spec, owner=Owner(self.name, self.namespace, self.uid),
            parallelism=lambda: self.parallelism, should_stop=self.stop_event.is_set,
            on_finished=self._child_finished, command=self.trainer_command,
        )
        loop = SearchLoop(search, store=store, store_uri=search_uri, executor=executor, on_step=self._on_step, should_stop=self.stop_event.is_set)
        self.loop = loop
        with self.lock:
            if refused:
                message = "spec changes after start are refused (the search keeps its original spec): " + ", ".join(refused)
                self.conditions = st.set_condition(self.conditions, kind="SpecChangeRefused", status=True, reason=st.Reason.SPEC_CHANGED, message=message, now=self.clock())
            self._set_phase("Running", st.Reason.STARTED, f"search running, store {search_uri}")
        self._event("Normal", "Started", f"search started (store {search_uri})")
        try:
            summary = loop.run()
        except StoreError as err:
            self.metrics.store_errors.labels(op="loop").inc()
            return self._fail(st.Reason.STORE_UNAVAILABLE, str(err))
        except SearchFailed as err:
            self._policy_metrics(loop)
            return self._fail(st.Reason.TOO_MANY_FAILURES, str(err))
        self._policy_metrics(loop)
        with self.lock:
            best = summary.get("bestFeasible") or summary.get("best") or {}
            message = f"search finished: best {best.get('hash', '-')} accuracy {best.get('valAccuracy', 0):.4f}"
            self._set_phase("Succeeded", st.Reason.COMPLETED, message, fields=st.from_summary(summary))
        self._event("Normal", "Succeeded", message)

    def _pin(self, store: Store, search: ArchitectureSearch) -> tuple[ArchitectureSearch, list[str]]:
        """Write ``search.yaml`` once; when it exists, run the stored search and list the refused changes."""
        text = json.dumps(search.model_dump(mode="json", by_alias=True, exclude={"status"}), sort_keys=True, indent=2)
        try:
            stored = parse_search(json.loads(store.get_bytes(SEARCH_FILE)))
        except StoreNotFound:
            store.put_bytes(SEARCH_FILE, text.encode())
            return search, []
        return stored, st.refused_changes(resolved_spec(stored), resolved_spec(search))

    def _on_step(self, report: StepReport) -> None:
        if self.stop_event.is_set():
            return
        self.metrics.step_done(search=self.name, summary=report.summary)
        for record in report.records:
            self.metrics.children.labels(search=self.name, status=record.status).inc()
        self._policy_metrics(self.loop)
        with self.lock:
            message = f"episode {report.episode} step {report.step} done"
            self._set_phase("Running", st.Reason.STEP_COMPLETED, message, fields=st.from_summary(report.summary))
        self._event("Normal", "StepCompleted", f"{message}: {len(report.records)} children")
        for record in report.records:
            if record.status == "failed":
                self._event("Warning", "ChildFailed", f"{record.child}: exit code {record.exit_code}, {record.reason}"[:500])

    def _policy_metrics(self, source: Any) -> None:
        update = getattr(source, "last_update", None)
        if update:
            self.metrics.policy_updated(search=self.name, update=update)

    def _child_finished(self, outcome: ChildOutcome) -> None:
        self.metrics.child_duration.labels(search=self.name).observe(outcome.seconds)

    # ------------------------------------------------------------ status and events

    def _fail(self, reason: st.Reason, message: str) -> None:
        LOG.warning("%s/%s: failed: %s: %s", self.namespace, self.name, reason.value, message)
        with self.lock:
            self._set_phase("Failed", reason, message, observed=True)
        self._event("Warning", "Failed", f"{reason.value}: {message}")

    def _set_phase(self, phase: st.Phase, reason: st.Reason, message: str, *, fields: dict | None = None, observed: bool = False) -> None:
        """Patch phase, conditions and ``fields``; the caller holds ``self.lock``."""
        self.phase = phase
        self.conditions = st.phase_conditions(self.conditions, phase=phase, reason=reason, message=message, now=self.clock())
        patch = {"phase": phase, **(fields or {})}
        if observed or phase != "Pending":
            patch["observedGeneration"] = self.generation
        self._patch(patch)

    def _patch(self, fields: dict[str, Any]) -> None:
        try:
            self.kube.patch_search_status(namespace=self.namespace, name=self.name, status={**fields, "conditions": self.conditions})
        except KubeError as err:
            LOG.warning("%s/%s: status patch failed: %s", self.namespace, self.name, err)

    def _event(self, event_type: str, reason: str, message: str) -> None:
        try:
            self.kube.create_event(involved=self.obj, event_type=event_type, reason=reason, message=message, component=COMPONENT)
        except KubeError as err:
            LOG.warning("%s/%s: event %s not recorded: %s", self.namespace, self.name, reason, err)
