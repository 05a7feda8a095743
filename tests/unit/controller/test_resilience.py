"""Transient API errors are retried with backoff, permanent ones are not; leader election on a
Lease with optimistic concurrency; where a search's data lives and which stores it may name."""

from __future__ import annotations

import copy
import types

import pytest
from kubernetes.client.rest import ApiException

from controller import kube as kube_mod
from controller.kube import Kube, KubeError, Use
from controller.leader import LeaderElector, LeaseConfig
from controller.tenancy import StorePolicy, search_location


@pytest.fixture
def kube(monkeypatch):
    monkeypatch.setattr(kube_mod, "RETRY_DELAYS_S", (0.0, 0.0, 0.0))
    errors: list[str] = []
    k = Kube(kube_mod.k8s_client.ApiClient(), on_error=errors.append)
    k.errors = errors
    return k


def answers(*items):
    """A call that raises or returns ``items`` in turn (an ``ApiException`` status, or a JSON body)."""
    queue = list(items)
    calls = []

    def fn():
        calls.append(1)
        item = queue.pop(0)
        if isinstance(item, int):
            err = ApiException(status=item, reason="injected")
            err.headers = {"Retry-After": "0"}
            raise err
        return types.SimpleNamespace(data=item.encode())

    fn.calls = calls
    return fn


def test_transient_answers_are_retried_until_one_succeeds(kube):
    fn = answers(500, 429, 503, '{"ok": 1}')

    assert kube._call(Use("list", "batch", "jobs"), fn) == {"ok": 1}
    assert len(fn.calls) == 4 and kube.errors == ["list"] * 3


def test_a_transient_error_that_persists_is_raised_as_transient_after_the_last_retry(kube):
    fn = answers(500, 500, 500, 500, '{"never": 1}')

    with pytest.raises(KubeError) as err:
        kube._call(Use("create", "batch", "jobs"), fn)
    assert err.value.status == 500 and err.value.transient and len(fn.calls) == 4


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_permanent_errors_are_raised_at_once(kube, status):
    fn = answers(status, '{"never": 1}')

    with pytest.raises(KubeError) as err:
        kube._call(Use("create", "batch", "jobs"), fn)
    assert err.value.status == status and not err.value.transient and len(fn.calls) == 1


def test_a_create_whose_answer_was_lost_adopts_the_job_on_the_retried_409(kube):
    """The first create happened but answered 500; its retry gets 409 and ``create_job`` says so (``None``)."""
    fn = answers(500, 409)
    kube.batch = types.SimpleNamespace(create_namespaced_job=lambda *a, **k: fn())

    assert kube.create_job(namespace="n", body={"metadata": {"name": "j"}}) is None
    assert len(fn.calls) == 2


def test_no_answer_is_transient(kube):
    def refused():
        raise ConnectionRefusedError("refused")

    with pytest.raises(KubeError) as err:
        kube._call(Use("list", "batch", "jobs"), refused)
    assert err.value.status == 0 and err.value.transient


# ---------------------------------------------------------------- leader election


class LeaseServer:
    """An in-memory Lease API with resourceVersions: a stale replace answers ``None`` (409)."""

    def __init__(self):
        self.lease = None
        self.version = 0
        self.down = False

    def _check(self):
        if self.down:
            raise KubeError("get leases: 503", 503)

    def read_lease(self, *, namespace, name, retry=True):
        self._check()
        return copy.deepcopy(self.lease)

    def create_lease(self, *, namespace, body):
        self._check()
        if self.lease is not None:
            return None
        return self._store(body)

    def replace_lease(self, *, namespace, body, retry=True):
        self._check()
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            return None
        return self._store(body)

    def _store(self, body):
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def elector(server, name, clock, events):
    config = LeaseConfig(namespace="ns", lease_duration_s=15, renew_deadline_s=10, retry_period_s=2)
    return LeaderElector(
        server,
        config,
        name,
        clock=clock,
        on_started_leading=lambda: events.append(f"{name} leads"),
        on_stopped_leading=lambda: events.append(f"{name} stops"),
    )


def test_one_replica_leads_and_the_other_takes_over_only_after_the_lease_expired():
    server, clock, events = LeaseServer(), Clock(), []
    a, b = elector(server, "a", clock, events), elector(server, "b", clock, events)

    assert a.try_acquire() is True
    assert b.try_acquire() is False
    assert server.lease["spec"]["holderIdentity"] == "a" and server.lease["spec"]["leaseTransitions"] == 0
    clock.t = 14.0  # a renews on time: b never may take it
    assert a.try_acquire() is True and b.try_acquire() is False
    clock.t = 28.0  # 14 s after b last saw a change: still within the 15 s lease
    assert b.try_acquire() is False
    clock.t = 29.5  # a is silent (dead) for 15.5 s as b observed it
    assert b.try_acquire() is True
    assert server.lease["spec"]["holderIdentity"] == "b" and server.lease["spec"]["leaseTransitions"] == 1
    assert a.try_acquire() is False and a.held_by_other


def test_two_replicas_racing_for_an_expired_lease_cannot_both_win():
    server, clock, events = LeaseServer(), Clock(), []
    a, b, c = (elector(server, n, clock, events) for n in "abc")
    assert a.try_acquire()
    b.try_acquire(), c.try_acquire()
    clock.t = 20.0
    stale = server.read_lease(namespace="ns", name="x")
    assert b.try_acquire() is True
    # c read the lease before b wrote it and thinks it expired long ago; b's write changed the resourceVersion
    c._observed_at = -100
    c.kube = types.SimpleNamespace(
        read_lease=lambda **k: copy.deepcopy(stale),
        replace_lease=server.replace_lease,
        create_lease=server.create_lease,
    )
    assert c.try_acquire() is False
    assert server.lease["spec"]["holderIdentity"] == "b"


def test_a_released_lease_is_taken_at_once():
    server, clock, events = LeaseServer(), Clock(), []
    a, b = elector(server, "a", clock, events), elector(server, "b", clock, events)
    assert a.try_acquire()
    a.leading.set()
    a.release()

    assert server.lease["spec"]["holderIdentity"] == "" and b.try_acquire() is True


def test_a_leader_that_cannot_renew_stops_leading_before_the_lease_expires():
    server, clock, events = LeaseServer(), Clock(), []
    a = elector(server, "a", clock, events)
    assert a.try_acquire()
    a.leading.set()
    server.down = True
    waits = []

    def wait(seconds):
        waits.append(seconds)
        clock.t += seconds
        return False

    a.stopping = types.SimpleNamespace(is_set=lambda: False, wait=wait, set=lambda: None)
    a._renew()

    assert events == ["a stops"] and not a.is_leader
    assert clock.t <= 10.0 < 15.0  # gave up at the renew deadline, before anyone may take over


def test_lease_timing_must_be_ordered():
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        LeaseConfig(namespace="ns", lease_duration_s=5, renew_deadline_s=10, retry_period_s=2)


# ---------------------------------------------------------------- tenancy


def test_a_search_lives_under_its_namespace_name_and_uid():
    root = "s3://bucket/searches"
    assert search_location(root, namespace="team-a", name="s", uid="u1") == "s3://bucket/searches/team-a/s/u1"
    assert search_location(root, namespace="team-b", name="s", uid="u1") != search_location(
        root, namespace="team-a", name="s", uid="u1"
    )
    assert (
        search_location(root, namespace="team-a", name="s", uid="u2", resume_uid="u1")
        == "s3://bucket/searches/team-a/s/u1"
    )


def test_store_policy():
    open_policy = StorePolicy()
    policy = StorePolicy(uris=("s3://epnas/searches",), endpoints=("http://minio.minio:9000",))

    assert open_policy.refusal("s3://any/where", "http://x:1") is None
    assert policy.refusal("s3://epnas/searches/team-a", "http://minio.minio:9000/") is None
    assert policy.refusal("s3://epnas/searches", "http://minio.minio:9000") is None
    assert "spec.store.uri" in policy.refusal("s3://epnas/searches-other", "http://minio.minio:9000")
    assert "spec.store.uri" in policy.refusal("s3://other/searches", "http://minio.minio:9000")
    assert "spec.store.endpoint" in policy.refusal("s3://epnas/searches", "http://evil:9000")
    assert "(none: AWS S3)" in policy.refusal("s3://epnas/searches", None)
    assert "'..'" in open_policy.refusal("s3://epnas/searches/../x", None)
