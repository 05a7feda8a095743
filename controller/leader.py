"""Leader election on a ``coordination.k8s.io/v1`` Lease: of several controller replicas, one
runs searches, the others wait to take over.

The protocol is client-go's (``k8s.io/client-go/tools/leaderelection``), on the Lease object
``--leader-election-id`` in ``--leader-election-namespace``:

* A candidate reads the Lease.  It may take it when there is none (create; a 409 means another
  replica was first), when it holds it already (renew), or when the holder's record has not
  changed for ``lease_duration_s`` *as this replica observed it* (a local monotonic clock: no
  trust in the other replica's wall clock).  Taking and renewing are a ``replace`` at the
  resourceVersion it read, so of two replicas racing for an expired Lease one wins and the
  other gets 409.
* The leader renews every ``retry_period_s``.  When it has not managed to renew for
  ``renew_deadline_s`` (< ``lease_duration_s``) it stops leading at once: by the time another
  replica may take over, this one has stopped creating Jobs.  The caller exits the process
  (the kubelet restarts it as a candidate).
* A leader that shuts down cleanly releases the Lease (empty holder, 1 s duration), so the
  hand-over after a rollout takes about ``retry_period_s``, not ``lease_duration_s``.

The hand-over after a leader dies without releasing takes at most
``lease_duration_s + retry_period_s`` (measured in docs/benchmarks.md).  No Job is ever
created twice either way: Job names are deterministic and a 409 adopts (``controller.jobs``).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable

from controller.kube import Kube, KubeError, Metadata, Obj

LOG = logging.getLogger("epnas.controller.leader")


@dataclasses.dataclass(frozen=True)
class LeaseConfig:
    """Timing of the election (client-go's defaults: 15 s, 10 s, 2 s)."""

    namespace: str
    name: str = "epnas-controller"
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError("leader election needs 0 < retry period < renew deadline < lease duration")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(config: LeaseConfig, identity: str, *, previous: Obj | None, release: bool = False) -> Obj:
    """The Lease held (or, with ``release``, given up) by ``identity`` (pure but for the time stamps).

    ``leaseTransitions`` counts changes of holder; ``acquireTime`` changes only with the holder.
    """
    spec = dict((previous or {}).get("spec") or {})
    holder = spec.get("holderIdentity")
    now = _now()
    transitions = int(spec.get("leaseTransitions") or 0)
    if release:
        spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=now)
    else:
        if holder != identity:
            spec.update(acquireTime=now, leaseTransitions=transitions + 1 if previous else 0)
        spec.update(holderIdentity=identity, leaseDurationSeconds=max(1, round(config.lease_duration_s)), renewTime=now)
    metadata: Metadata = {"name": config.name, "namespace": config.namespace}
    if previous:
        metadata["resourceVersion"] = previous["metadata"]["resourceVersion"]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


class LeaderElector:
    """Campaigns for the Lease in a daemon thread; ``is_leader`` says whether this replica leads.

    ``on_started_leading`` runs once in the election thread when the Lease is first won;
    ``on_stopped_leading`` once when it is lost (renewal failed past the deadline, or another
    replica holds it).  ``release()`` gives a held Lease up (clean shutdown).
    """

    def __init__(
        self,
        kube: Kube,
        config: LeaseConfig,
        identity: str,
        *,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.kube = kube
        self.config = config
        self.identity = identity
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.clock = clock
        self.leading = threading.Event()
        self.stopping = threading.Event()
        self.last_success = clock()  # the last successful read or write of the Lease
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) as last seen
        self._observed_at = 0.0
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    @property
    def held_by_other(self) -> bool:
        """The Lease, as last read, names another holder."""
        return self._observed is not None and self._observed[0] not in ("", self.identity)

    @property
    def healthy(self) -> bool:
        """The election thread runs and reached the API server within the lease duration."""
        return self.thread.is_alive() and self.clock() - self.last_success < self.config.lease_duration_s

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def _run(self) -> None:
        while not self.stopping.is_set():
            if self.is_leader:
                self._renew()
            elif self.try_acquire():
                LOG.info("%s: became the leader (lease %s/%s)", self.identity, self.config.namespace, self.config.name)
                self.leading.set()
                self.on_started_leading()
            self.stopping.wait(self.config.retry_period_s)

    def _renew(self) -> None:
        deadline = self.last_success + self.config.renew_deadline_s
        while not self.stopping.is_set():
            if self.try_acquire():
                return
            if self.clock() >= deadline or self.held_by_other:
                break
            self.stopping.wait(min(self.config.retry_period_s, max(0.0, deadline - self.clock())))
        if self.stopping.is_set():
            return
        observed = self._observed
        why = (
            f"{observed[0]} holds it"
            if observed is not None and self.held_by_other
            else f"no renewal for {self.config.renew_deadline_s:.0f} s"
        )
        LOG.error("%s: lost the lease %s/%s (%s)", self.identity, self.config.namespace, self.config.name, why)
        self.leading.clear()
        self.on_stopped_leading()

    def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; ``True`` when this replica holds it now."""
        with self._lock:
            try:
                current = self.kube.read_lease(namespace=self.config.namespace, name=self.config.name)
                if current is None:
                    got = self.kube.create_lease(
                        namespace=self.config.namespace, body=lease_body(self.config, self.identity, previous=None)
                    )
                    self.last_success = self.clock()
                    return got is not None
                self.last_success = self.clock()
                if not self._may_take(current):
                    return False
                got = self.kube.replace_lease(
                    namespace=self.config.namespace, body=lease_body(self.config, self.identity, previous=current)
                )
            except KubeError as err:
                LOG.warning("%s: lease %s/%s: %s", self.identity, self.config.namespace, self.config.name, err)
                return False
            if got is None:  # someone else wrote it since we read it
                return False
            self.last_success = self.clock()
            self._see(got)
            return True

    def _may_take(self, lease: Obj) -> bool:
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        self._see(lease)
        if not holder or holder == self.identity:
            return True
        duration = float(spec.get("leaseDurationSeconds") or self.config.lease_duration_s)
        return self.clock() - self._observed_at > duration

    def _see(self, lease: Obj) -> None:
        spec = lease.get("spec") or {}
        record = (spec.get("holderIdentity") or "", spec.get("renewTime") or "")
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()

    def release(self) -> None:
        """Give the Lease up if this replica holds it (best effort)."""
        self.stop()
        if not self.is_leader:
            return
        self.leading.clear()
        with self._lock:
            try:
                # one attempt each: a shutdown must not wait out an unreachable API server (the Lease then expires)
                current = self.kube.read_lease(namespace=self.config.namespace, name=self.config.name, retry=False)
                if current and (current.get("spec") or {}).get("holderIdentity") == self.identity:
                    self.kube.replace_lease(
                        namespace=self.config.namespace,
                        retry=False,
                        body=lease_body(self.config, self.identity, previous=current, release=True),
                    )
                    LOG.info("%s: released the lease", self.identity)
            except KubeError as err:
                LOG.warning("%s: could not release the lease: %s", self.identity, err)
