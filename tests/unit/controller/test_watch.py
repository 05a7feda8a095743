"""Watch bookkeeping with a fake ``Kube``: resume from the last resourceVersion, relist on 410
Gone, reconnect after a broken watch; the executor adopts on 409 and relists on Gone."""

from __future__ import annotations

from controller.jobs import JobExecutor, Owner
from controller.kube import Gone, KubeError
from controller.main import Controller
from controller.metrics import ControllerMetrics
from epnas.executors.base import ChildRun
from epnas.spec import SearchSpec


def search(name: str, version: str) -> dict:
    return {
        "metadata": {"name": name, "namespace": "n", "uid": f"uid-{name}", "generation": 1, "resourceVersion": version},
        "status": {"phase": "Succeeded", "observedGeneration": 1},
    }


class FakeSearchKube:
    def __init__(self, controller_ref: list) -> None:
        self.calls: list[tuple] = []
        self.watches = 0
        self.controller_ref = controller_ref

    def list_searches(self, *, namespace):
        self.calls.append(("list", namespace))
        return [search("a", "1")], str(len([c for c in self.calls if c[0] == "list"]))

    def watch_searches(self, *, namespace, resource_version, timeout_s):
        self.calls.append(("watch", resource_version))
        self.watches += 1
        if self.watches == 1:
            raise Gone("too old", 410)
        if self.watches == 2:
            return iter(
                [
                    {"type": "ADDED", "object": search("b", "5")},
                    {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "7"}}},
                ]
            )
        if self.watches == 3:
            raise KubeError("connection reset")
        self.controller_ref[0].stopping.set()
        return iter([])


def test_controller_relists_on_gone_and_resumes_from_the_last_version(monkeypatch) -> None:
    monkeypatch.setattr("controller.main.RETRY_S", 0.01)
    ref: list = []
    kube = FakeSearchKube(ref)
    controller = Controller(kube=kube, metrics=ControllerMetrics(), namespace="n", trainer_command=["python"])
    ref.append(controller)
    controller.run()
    assert kube.calls == [("list", "n"), ("watch", "1"), ("list", "n"), ("watch", "2"), ("watch", "7"), ("watch", "7")]
    assert controller.ready.is_set() and controller.runners == {}  # Succeeded searches are never re-run


def job(name: str, state: str | None, version: str) -> dict:
    conditions = [{"type": state, "status": "True"}] if state else []
    return {
        "metadata": {"name": name, "resourceVersion": version},
        "status": {"conditions": conditions, "succeeded": 1 if state else 0},
    }


class FakeJobKube:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def list_jobs(self, *, namespace, selector):
        self.calls.append("list")
        if self.calls.count("list") == 1:
            return [job("s-e000-s00-c00", None, "3")], "3"  # exists already (a restarted controller)
        return [job(f"s-e000-s00-c0{i}", "Complete", "9") for i in range(2)], "9"

    def create_job(self, *, namespace, body):
        self.calls.append("create " + body["metadata"]["name"])
        return None  # 409: someone made it already

    def read_job(self, *, namespace, name):
        self.calls.append("get " + name)
        return job(name, None, "4")

    def watch_jobs(self, *, namespace, selector, resource_version, timeout_s):
        self.calls.append("watch " + resource_version)
        raise Gone("too old", 410)


def test_executor_adopts_existing_jobs_and_relists_on_gone() -> None:
    kube = FakeJobKube()
    ended = []
    executor = JobExecutor(
        kube=kube,
        spec=SearchSpec(),
        owner=Owner("s", "n", "u"),
        parallelism=lambda: None,
        should_stop=lambda: False,
        on_finished=ended.append,
    )
    runs = [
        ChildRun(
            search="s",
            child=f"e000-s00-c0{i}",
            arch_uri="a",
            out_uri="o",
            weights_uri=None,
            timeout_s=1,
            episode=0,
            step=0,
            index=i,
        )
        for i in range(2)
    ]
    outcomes = executor.submit(runs)
    assert [o.child for o in outcomes] == ["e000-s00-c00", "e000-s00-c01"] and all(o.succeeded for o in outcomes)
    assert kube.calls == ["list", "create s-e000-s00-c01", "get s-e000-s00-c01", "watch 3", "list"]
    assert len(ended) == 2


class DeletingKube:
    """One Job that exists unfinished, then a watch that says it was deleted (the garbage collector)."""

    def list_jobs(self, *, namespace, selector):
        return [job("s-e000-s00-c00", None, "3")], "3"

    def watch_jobs(self, *, namespace, selector, resource_version, timeout_s):
        return iter([{"type": "DELETED", "object": job("s-e000-s00-c00", None, "5")}])


RUN = ChildRun(
    search="s",
    child="e000-s00-c00",
    arch_uri="a",
    out_uri="o",
    weights_uri=None,
    timeout_s=1,
    episode=0,
    step=0,
    index=0,
)


def test_a_job_deleted_with_its_search_stops_the_wait_even_when_the_stop_arrives_later(monkeypatch) -> None:
    """The GC's Job DELETED event can come before the controller sees the search's deletion."""
    import threading
    import time

    from epnas.executors.base import SearchStopped

    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()  # the search's DELETED event, half a second later
    executor = JobExecutor(
        kube=DeletingKube(),
        spec=SearchSpec(),
        owner=Owner("s", "n", "u"),
        parallelism=lambda: None,
        should_stop=stop.is_set,
        on_finished=lambda outcome: None,
    )
    started = time.monotonic()
    try:
        executor.submit([RUN])
    except SearchStopped:
        pass
    else:
        raise AssertionError("a Job deleted with its search must stop the wait, not fail the child")
    assert time.monotonic() - started < 3


def test_a_job_deleted_by_hand_fails_its_child_after_the_grace(monkeypatch) -> None:
    monkeypatch.setattr("controller.jobs.JOB_DELETED_GRACE_S", 0.3)
    executor = JobExecutor(
        kube=DeletingKube(),
        spec=SearchSpec(),
        owner=Owner("s", "n", "u"),
        parallelism=lambda: None,
        should_stop=lambda: False,
        on_finished=lambda outcome: None,
    )
    (outcome,) = executor.submit([RUN])
    assert (outcome.succeeded, outcome.reason) == (False, "JobDeleted")
