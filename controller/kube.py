"""Thin wrappers over the official ``kubernetes`` client: every cluster call the controller makes.

Objects travel as plain dicts (the API's JSON, camelCase), read through the ``TypedDict``
views below; nothing is deserialized into client models.  Every function takes keyword-only
arguments and turns API errors into meaningful returns (404 → ``None``/``False``, 409 on
create → ``None``) or raises ``KubeError`` (``Gone`` for 410 on a watch).  Each failed
call counts in ``epnas_kubernetes_api_errors_total{verb}``.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypedDict

from kubernetes import client as k8s_client
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from controller.crd import GROUP, PLURAL, VERSION

EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
JSON_PATCH = "application/merge-patch+json"


class Metadata(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    generation: int
    resourceVersion: str
    labels: dict[str, str]
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
        self.on_error = on_error

    def _call(self, verb: str, fn: Callable[[], Any], *, ok: tuple[int, ...] = ()) -> Any:
        """``fn()`` decoded from JSON; an ``ApiException`` whose status is in ``ok`` returns it as ``int``."""
        try:
            response = fn()
        except ApiException as err:
            if err.status in ok:
                return int(err.status)
            self.on_error(verb)
            raise KubeError(f"{verb}: {err.status} {err.reason}: {_message(err)}", err.status or 0) from None
        except Exception as err:  # connection refused, timeouts: urllib3 errors
            self.on_error(verb)
            raise KubeError(f"{verb}: {type(err).__name__}: {err}") from None
        return json.loads(response.data) if response.data else {}

    # ------------------------------------------------------------ Jobs

    def create_job(self, *, namespace: str, body: Obj) -> Obj | None:
        """The created Job, or ``None`` when one of that name exists already (409)."""
        got = self._call("create", lambda: self.batch.create_namespaced_job(namespace, body, _preload_content=False), ok=(409,))
        return None if got == 409 else got

    def read_job(self, *, namespace: str, name: str) -> Obj | None:
        """The Job, or ``None`` when there is none."""
        got = self._call("get", lambda: self.batch.read_namespaced_job(name, namespace, _preload_content=False), ok=(404,))
        return None if got == 404 else got

    def list_jobs(self, *, namespace: str, selector: str) -> tuple[list[Obj], str]:
        """``(jobs, resourceVersion of the list)`` for a label selector."""
        got = self._call("list", lambda: self.batch.list_namespaced_job(namespace, label_selector=selector, _preload_content=False))
        return got.get("items", []), got["metadata"]["resourceVersion"]

    def watch_jobs(self, *, namespace: str, selector: str, resource_version: str, timeout_s: int) -> Iterator[WatchEvent]:
        """Job events after ``resource_version``, until the server ends the watch (``timeout_s``).

        Raises ``Gone`` when the version is too old (list again).
        """
        return self._watch(lambda **kw: self.batch.list_namespaced_job(namespace, label_selector=selector, **kw), resource_version, timeout_s)

    def list_pods(self, *, namespace: str, selector: str) -> list[Obj]:
        got = self._call("list", lambda: self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False))
        return got.get("items", [])

    # ------------------------------------------------------------ ArchitectureSearch

    def list_searches(self, *, namespace: str | None) -> tuple[list[Obj], str]:
        """Every ArchitectureSearch (in ``namespace``, or everywhere when ``None``) and the list's resourceVersion."""
        got = self._call("list", lambda: self._list_searches(namespace, _preload_content=False))
        return got.get("items", []), got["metadata"]["resourceVersion"]

    def watch_searches(self, *, namespace: str | None, resource_version: str, timeout_s: int) -> Iterator[WatchEvent]:
        """ArchitectureSearch events after ``resource_version``; ``Gone`` on 410."""
        return self._watch(lambda **kw: self._list_searches(namespace, **kw), resource_version, timeout_s)

    def _list_searches(self, namespace: str | None, **kwargs: Any) -> Any:
        if namespace is None:
            return self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kwargs)
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kwargs)

    def patch_search_status(self, *, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge-patch the status subresource; ``False`` when the object is gone."""
        body = {"status": status}
        got = self._call(
            "patch",
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, _preload_content=False, _content_type=JSON_PATCH
            ),
            ok=(404,),
        )
        return got != 404

    def create_event(self, *, involved: Obj, event_type: Literal["Normal", "Warning"], reason: str, message: str, component: str) -> None:
        """A core/v1 Event on ``involved`` (best effort is the caller's choice: this raises ``KubeError``)."""
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
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
        self._call("create", lambda: self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False))

    # ------------------------------------------------------------ watch

    def _watch(self, list_fn: Callable[..., Any], resource_version: str, timeout_s: int) -> Iterator[WatchEvent]:
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
            self.on_error("watch")
            cls = Gone if err.status == 410 else KubeError
            raise cls(f"watch: {err.status} {err.reason}", err.status or 0) from None
        except Exception as err:
            self.on_error("watch")
            raise KubeError(f"watch: {type(err).__name__}: {err}") from None
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
