"""A custom resource nested too deeply (tests/e2e/test_bad_searches.py on the real API server):
the controller decodes what the API server keeps (up to 10,000 levels) and fails such a search
``InvalidSpec`` naming the field, with the same limit as a search file."""

from __future__ import annotations

import json
import sys
import threading

import pytest
import yaml

from controller.kube import Kube
from controller.main import allow_deep_objects
from controller.metrics import ControllerMetrics
from controller.runner import SearchRunner, too_deep
from epnas.errors import SpecError
from epnas.spec import MAX_NESTING, load_search


def deep(depth: int, leaf=1):
    """``{"a": {"a": … leaf}}``, ``depth`` dicts deep, built without recursion."""
    node = leaf
    for _ in range(depth):
        node = {"a": node}
    return node


def search(options) -> dict:
    return {
        "apiVersion": "epnas.io/v1alpha1",
        "kind": "ArchitectureSearch",
        "metadata": {"name": "deep", "namespace": "ns", "uid": "u-1", "generation": 1},
        "spec": {"dataset": {"kind": "synthetic", "options": {"n": options}}, "store": {"uri": "s3://b/x"}},
    }


@pytest.fixture
def recursion_limit():
    limit = sys.getrecursionlimit()
    yield
    sys.setrecursionlimit(limit)


@pytest.mark.parametrize("depth", [55, 58, 59, 60, 61, 70])
def test_too_deep_is_the_search_files_limit(depth):
    """A document is refused by ``too_deep`` exactly when the same document as a file is by ``load_search``."""
    doc = search(deep(depth))
    doc["metadata"] = {"name": "deep"}
    doc["spec"].pop("store")
    try:
        load_search(yaml.safe_dump(doc))
        file_refused = False
    except SpecError as err:
        file_refused = f"nested deeper than {MAX_NESTING} levels" in str(err)
    assert (too_deep(doc) is not None) == file_refused
    if file_refused:
        assert too_deep(doc) == "spec.dataset.options.n"


def test_too_deep_names_lists_by_index():
    assert too_deep({"spec": {"constraints": [deep(100)]}}) == "spec.constraints[0].a"
    assert too_deep({"spec": {"constraints": [1, 2]}}) is None


class StatusKube:
    """What a runner that fails at once calls: status patches and Events, recorded."""

    def __init__(self):
        self.patches: list[dict] = []
        self.events: list[tuple[str, str]] = []

    def patch_search_status(self, *, namespace, name, status):
        self.patches.append(json.loads(json.dumps(status)))
        return True

    def create_event(self, *, involved, event_type, reason, message, component):
        self.events.append((reason, message))


def test_a_search_nested_as_deep_as_the_api_server_allows_fails_invalid_spec_naming_the_field():
    kube = StatusKube()
    runner = SearchRunner(search(deep(9_990)), kube=kube, metrics=ControllerMetrics())
    runner._main()  # the thread's body, here: no store, no Job is ever reached

    status = kube.patches[-1]
    assert status["phase"] == "Failed" and status["reason"] == "InvalidSpec"
    assert status["message"] == f"spec.dataset.options.n: nested deeper than {MAX_NESTING} levels"
    assert ("Failed", f"InvalidSpec: {status['message']}") in kube.events


class Response:
    def __init__(self, lines: list[str]):
        self.body = "".join(line + "\n" for line in lines).encode()

    def stream(self, amt=None, decode_content=False):
        yield self.body

    def release_conn(self):
        pass


def test_the_watch_decodes_an_object_10000_levels_deep(recursion_limit):
    """Before ``allow_deep_objects`` such an event broke the watch, which resumed from the same
    version and broke again, forever: no other search's event got through."""
    line = json.dumps({"type": "ADDED", "object": search("NESTED")}).replace(
        '"NESTED"', '{"a": ' * 10_000 + "1" + "}" * 10_000
    )
    kube = Kube.__new__(Kube)
    kube.on_error = lambda verb: None
    allow_deep_objects()
    got: list = []

    def watch() -> None:  # in a thread too: the runners decode their status patches' answers
        got.extend(kube._events(Response([line])))

    thread = threading.Thread(target=watch)
    thread.start()
    thread.join()
    [event] = got
    assert event["object"]["metadata"]["name"] == "deep"
    assert too_deep(event["object"]) == "spec.dataset.options.n"


def named(name: str, **budget) -> dict:
    doc = search(1)
    doc["metadata"]["name"] = name
    doc["spec"]["budget"] = budget
    doc["spec"]["finalTraining"] = {"top": 1}
    return doc


def test_job_names_stay_dns_labels_for_any_budget_a_search_can_have():
    """``<search>-final-eNNN-sNN-cNN``: 59 characters for a 40-character name; the numbers widen with
    the budget, and a spec whose last Job name would pass 63 fails InvalidSpec naming metadata.name."""
    from controller.runner import job_name_problem
    from epnas.spec import parse_search

    assert job_name_problem(parse_search(named("n" * 40, episodes=1000, stepsPerEpisode=100, branches=512))) is None
    assert job_name_problem(
        parse_search(named("n" * 40, episodes=10**6, stepsPerEpisode=1000, branches=512))
    ).startswith("with this spec.budget its Job names reach 64 characters (" + "n" * 40 + "-final-e999999-s999-c511)")
    assert job_name_problem(parse_search(named("n" * 39, episodes=10**6, stepsPerEpisode=1000, branches=512))) is None

    kube = StatusKube()
    SearchRunner(
        named("n" * 40, episodes=10**6, stepsPerEpisode=1000, branches=512), kube=kube, metrics=ControllerMetrics()
    )._main()
    status = kube.patches[-1]
    assert status["phase"] == "Failed" and status["reason"] == "InvalidSpec"
    assert status["message"].startswith("metadata.name: with this spec.budget its Job names reach 64 characters")
