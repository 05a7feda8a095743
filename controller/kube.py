"""Thin wrappers over the official ``kubernetes`` client: every cluster call the controller makes.

Objects travel as plain dicts (the API's JSON, camelCase), read through the ``TypedDict``
views below; nothing is deserialized into client models.  Every function takes keyword-only
arguments and turns API errors into meaningful returns (404 → ``None``/``False``, 409 on
create → ``None``) or raises ``KubeError`` (``Gone`` for 410 on a watch).  Each failed
call counts in ``epnas_kubernetes_api_errors_total{verb}``.

Transient answers (429, 500, 502, 503, 504, no answer at all) are retried here with bounded
exponential backoff and jitter (``RETRY_DELAYS_S``, ``Retry-After`` honoured up to the same
cap), and every non-watch call has a request timeout (``REQUEST_TIMEOUT_S``).  A create that
timed out may have happened: the retry then sees 409, which ``create_job`` answers by
adopting the Job.  What still fails raises ``KubeError``; ``KubeError.transient`` says whether
waiting could fix it (the caller backs off and resumes) or not (403, 404, 422: the search
fails with the reason).

Every call names the RBAC permission it uses (``Use``): ``controller.rbac`` checks by test
that these, and only these, are what the Role and ClusterRole grant.
"""

from __future__ import annotations

import datetime
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal, NamedTuple, TypedDict

from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from controller.crd import GROUP, PLURAL, VERSION

LOG = logging.getLogger("epnas.controller.kube")
EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
JSON_PATCH = "application/merge-patch+json"
TRANSIENT_STATUSES = frozenset({0, 408, 429, 500, 502, 503, 504})
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # then give up: about 15 s of retrying per call
REQUEST_TIMEOUT_S = (10, 30)  # (connect, read) for every call that is not a watch


class Use(NamedTuple):
    """One RBAC permission an API call needs: ``verb`` on ``group``/``resource``."""

    verb: str
    group: str
    resource: str


JOBS = ("batch", "jobs")
PODS = ("", "pods")
EVENTS = ("", "events")
SEARCHES = (GROUP, PLURAL)
SEARCH_STATUS = (GROUP, f"{PLURAL}/status")
LEASES = ("coordination.k8s.io", "leases")


class Metadata(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    generation: int
    resourceVersion: str
    labels: dict[str, str]
    ownerReferences: list[dict[str, Any]]
    creationTimestamp: str
    deletionTimestamp: str


class Obj(TypedDict, total=False):
    """Any API object as JSON: a Job, a Pod, an ArchitectureSearch."""

    apiVersion: str
    kind: str
    metadata: Metadata
    spec: dict[str, Any]
    status: dict[str, Any]


class WatchEvent(TypedDict):
    type: EventType
    object: Obj


class KubeError(RuntimeError):
    """A Kubernetes call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        """Whether waiting could fix it: no answer, a timeout, throttling or a server error."""
        return self.status in TRANSIENT_STATUSES


class Gone(KubeError):
    """410: the resourceVersion a watch resumed from is too old; list again."""


class Kube:
    """The API calls the controller makes, on one ``ApiClient``.

    ``on_error(verb)`` is called once per failed call (for the error counter).
    """

    def __init__(self, api_client: k8s_client.ApiClient, *, on_error: Callable[[str], None]):
        self.api_client = api_client
        self.batch = k8s_client.BatchV1Api(api_client)
        self.core = k8s_client.CoreV1Api(api_client)
        self.custom = k8s_client.CustomObjectsApi(api_client)
        self.coordination = k8s_client.CoordinationV1Api(api_client)
        self.on_error = on_error

    def _call(self, use: Use, fn: Callable[[], Any], *, ok: tuple[int, ...] = (), retry: bool = True) -> Any:
        """``fn()`` decoded from JSON, retried while the answer is transient (``RETRY_DELAYS_S``;
        once only without ``retry``); an ``ApiException`` whose status is in ``ok`` returns it as ``int``."""
        attempts = len(RETRY_DELAYS_S) + 1 if retry else 1
        for attempt in range(attempts):
            try:
                response = fn()
            except ApiException as err:
                if err.status in ok:
                    return int(err.status)
                self.on_error(use.verb)
                error = KubeError(
                    f"{use.verb} {use.resource}: {err.status} {err.reason}: {_message(err)}", err.status or 0
                )
                retry_after = _retry_after(err)
            except Exception as err:  # connection refused, timeouts: urllib3 errors
                self.on_error(use.verb)
                error, retry_after = KubeError(f"{use.verb} {use.resource}: {type(err).__name__}: {err}"), None
            else:
                return json.loads(response.data) if response.data else {}
            if not error.transient or attempt == attempts - 1:
                raise error
            delay = RETRY_DELAYS_S[attempt]
            delay = min(max(delay, retry_after or 0.0), RETRY_DELAYS_S[-1]) * (0.75 + random.random() / 2)
            LOG.warning("%s; retrying in %.1f s (attempt %d of %d)", error, delay, attempt + 2, len(RETRY_DELAYS_S) + 1)
            time.sleep(delay)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ Jobs

    def create_job(self, *, namespace: str, body: Obj) -> Obj | None:
        """The created Job, or ``None`` when one of that name exists already (409)."""
        got = self._call(
            Use("create", *JOBS), lambda: self.batch.create_namespaced_job(namespace, body, **_plain()), ok=(409,)
        )
        return None if got == 409 else got

    def read_job(self, *, namespace: str, name: str) -> Obj | None:
        """The Job, or ``None`` when there is none."""
        got = self._call(
            Use("get", *JOBS), lambda: self.batch.read_namespaced_job(name, namespace, **_plain()), ok=(404,)
        )
        return None if got == 404 else got

    def list_jobs(self, *, namespace: str, selector: str) -> tuple[list[Obj], str]:
        """``(jobs, resourceVersion of the list)`` for a label selector."""
        got = self._call(
            Use("list", *JOBS), lambda: self.batch.list_namespaced_job(namespace, label_selector=selector, **_plain())
        )
        return got.get("items", []), got["metadata"]["resourceVersion"]

    def watch_jobs(
        self, *, namespace: str, selector: str, resource_version: str, timeout_s: int
    ) -> Iterator[WatchEvent]:
        """Job events after ``resource_version``, until the server ends the watch (``timeout_s``).

        Raises ``Gone`` when the version is too old (list again).
        """
        return self._watch(
            Use("watch", *JOBS),
            lambda **kw: self.batch.list_namespaced_job(namespace, label_selector=selector, **kw),
            resource_version,
            timeout_s,
        )

    def delete_job(self, *, namespace: str, name: str) -> None:
        """Delete a Job and, in the background, its pods (a child given up on: ``JobExecutor``'s
        stuck pods); a Job already gone is fine."""
        self._call(
            Use("delete", *JOBS),
            lambda: self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background", **_plain()),
            ok=(404,),
        )

    def list_pods(self, *, namespace: str, selector: str) -> list[Obj]:
        got = self._call(
            Use("list", *PODS), lambda: self.core.list_namespaced_pod(namespace, label_selector=selector, **_plain())
        )
        return got.get("items", [])

    # ------------------------------------------------------------ ArchitectureSearch

    def list_searches(self, *, namespace: str | None) -> tuple[list[Obj], str]:
        """Every ArchitectureSearch (in ``namespace``, or everywhere when ``None``) and the list's resourceVersion."""
        got = self._call(Use("list", *SEARCHES), lambda: self._list_searches(namespace, **_plain()))
        return got.get("items", []), got["metadata"]["resourceVersion"]

    def watch_searches(self, *, namespace: str | None, resource_version: str, timeout_s: int) -> Iterator[WatchEvent]:
        """ArchitectureSearch events after ``resource_version``; ``Gone`` on 410."""
        return self._watch(
            Use("watch", *SEARCHES), lambda **kw: self._list_searches(namespace, **kw), resource_version, timeout_s
        )

    def _list_searches(self, namespace: str | None, **kwargs: Any) -> Any:
        if namespace is None:
            return self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kwargs)
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kwargs)

    def patch_search_status(self, *, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge-patch the status subresource; ``False`` when the object is gone."""
        body = {"status": status}
        got = self._call(
            Use("patch", *SEARCH_STATUS),
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, _content_type=JSON_PATCH, **_plain()
            ),
            ok=(404,),
        )
        return got != 404

    def create_event(
        self, *, involved: Obj, event_type: Literal["Normal", "Warning"], reason: str, message: str, component: str
    ) -> None:
        """A core/v1 Event on ``involved`` (best effort is the caller's choice: this raises ``KubeError``)."""
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": involved.get("kind", "ArchitectureSearch"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._call(
            Use("create", *EVENTS), lambda: self.core.create_namespaced_event(meta["namespace"], body, **_plain())
        )

    # ------------------------------------------------------------ Leases (leader election)

    def read_lease(self, *, namespace: str, name: str, retry: bool = True) -> Obj | None:
        """The coordination.k8s.io/v1 Lease, or ``None`` when there is none."""
        got = self._call(
            Use("get", *LEASES),
            lambda: self.coordination.read_namespaced_lease(name, namespace, **_plain()),
            ok=(404,),
            retry=retry,
        )
        return None if got == 404 else got

    def create_lease(self, *, namespace: str, body: Obj) -> Obj | None:
        """The created Lease, or ``None`` when another replica created it first (409)."""
        got = self._call(
            Use("create", *LEASES),
            lambda: self.coordination.create_namespaced_lease(namespace, body, **_plain()),
            ok=(409,),
        )
        return None if got == 409 else got

    def replace_lease(self, *, namespace: str, body: Obj, retry: bool = True) -> Obj | None:
        """The Lease replaced at ``body``'s resourceVersion, or ``None`` when it changed since (409)."""
        name = body["metadata"]["name"]
        got = self._call(
            Use("update", *LEASES),
            lambda: self.coordination.replace_namespaced_lease(name, namespace, body, **_plain()),
            ok=(409,),
            retry=retry,
        )
        return None if got == 409 else got

    # ------------------------------------------------------------ watch

    def _watch(
        self, use: Use, list_fn: Callable[..., Any], resource_version: str, timeout_s: int
    ) -> Iterator[WatchEvent]:
        try:
            response = list_fn(
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_s,
                _preload_content=False,
                _request_timeout=(10, timeout_s + 30),
            )
        except ApiException as err:
            self.on_error(use.verb)
            cls = Gone if err.status == 410 else KubeError
            raise cls(f"watch {use.resource}: {err.status} {err.reason}", err.status or 0) from None
        except Exception as err:
            self.on_error(use.verb)
            raise KubeError(f"watch {use.resource}: {type(err).__name__}: {err}") from None
        return self._events(response)

    def _events(self, response: Any) -> Iterator[WatchEvent]:
        try:
            for line in iter_resp_lines(response):
                if not line.strip():
                    continue
                event = json.loads(line)
                if event["type"] == "ERROR":
                    status = event["object"]
                    code = int(status.get("code") or 0)
                    if code != 410:
                        self.on_error("watch")
                    raise (Gone if code == 410 else KubeError)(f"watch: {code} {status.get('message', '')}", code)
                yield event
        except KubeError:
            raise
        except Exception as err:  # the connection broke mid-stream: the caller resumes
            self.on_error("watch")
            raise KubeError(f"watch: {type(err).__name__}: {err}") from None
        finally:
            response.release_conn()


def _plain() -> dict[str, Any]:
    """The keyword arguments of a non-watch call: raw JSON back, and a request timeout."""
    return {"_preload_content": False, "_request_timeout": REQUEST_TIMEOUT_S}


def _retry_after(err: ApiException) -> float | None:
    """The ``Retry-After`` seconds of a 429/503 answer, if it gave any."""
    value = (err.headers or {}).get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _message(err: ApiException) -> str:
    try:
        return json.loads(err.body).get("message", "")
    except (TypeError, ValueError):
        return str(err.body or "")[:200]


def load_api_client(*, kubeconfig: str | None, pool_size: int = 32) -> k8s_client.ApiClient:
    """An ``ApiClient`` from ``kubeconfig`` (or in-cluster config, else ``$KUBECONFIG``/~/.kube/config).

    ``pool_size`` connections: one long watch per search plus the Job-creating threads.
    """
    from kubernetes import config as k8s_config

    configuration = k8s_client.Configuration()
    if kubeconfig:
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return k8s_client.ApiClient(configuration)
