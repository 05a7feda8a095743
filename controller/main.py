"""``python -m controller`` (``epnas controller``): watch ArchitectureSearch objects, one loop each.

    python -m controller [--namespace NS | --all-namespaces] [--metrics-port 8080]
                         [--kubeconfig PATH] [--trainer-command CMD] [--log-level INFO]
                         [--leader-elect | --no-leader-elect] [--leader-election-namespace NS]
                         [--leader-election-id NAME] [--lease-duration 15] [--renew-deadline 10]
                         [--retry-period 2] [--allowed-store URI]... [--allowed-endpoint URL]...

With leader election (the default) a replica first waits to hold the Lease
(``controller.leader``); only the leader watches and runs searches.  The watch lists once
(``/readyz`` turns ready), then watches from the list's resourceVersion, reconnecting from the
last version it saw when a watch ends or breaks, and listing again on 410 Gone.  ``decide``
says what an event means; ``Controller`` does it.  SIGTERM/SIGINT stop every loop between
steps, release the Lease and exit 0; a lost Lease stops every loop and exits 1 (the kubelet
restarts the replica as a candidate).

Exit codes: 0 stopped by a signal; 2 invalid flags (``epnas.errors.InvalidInput``: one line
``epnas controller: …`` on stderr, no traceback; argparse's own usage errors too); 1 a lost
Lease or another ``EpnasError`` fault.  Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import shlex
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Literal

import pydantic

from controller import http
from controller import kube as kube_mod
from controller.jobs import TRAINER_COMMAND
from controller.kube import Gone, Kube, KubeError, Obj
from controller.leader import LeaderElector, LeaseConfig
from controller.metrics import Metrics
from controller.runner import SearchRunner
from controller.tenancy import StorePolicy
from epnas.errors import FAULT, EpnasError, InvalidInput, message_lines
from epnas.spec import Trainer

LOG = logging.getLogger("epnas.controller")
PROG = "epnas controller"
WATCH_WINDOW_S = 60
RETRY_S = 2.0
STALL_S = 3 * WATCH_WINDOW_S  # no watch progress for this long: /healthz fails
# The API server keeps custom resources nested up to 10,000 levels (its JSON decoder's limit);
# json.loads of such an object needs one recursion level per nesting level.  Below this the
# watch could not decode the event (and retried it forever) and a relist raised RecursionError.
RECURSION_LIMIT = 3 * 10_000
SERVICE_ACCOUNT_NAMESPACE = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
Action = Literal["start", "observe", "stop", "skip"]


class _Shutdown(Exception):
    """SIGTERM or SIGINT arrived."""


def decide(event_type: str, obj: Obj, *, running: bool) -> Action:
    """What to do with an ArchitectureSearch event (pure).

    * ``stop``: the object was deleted or is being deleted.
    * ``observe``: a loop already owns it (spec changes are checked there).
    * ``skip``: it already ended (``Succeeded`` or ``Failed``) and its spec was not edited since
      (``metadata.generation`` ≤ ``status.observedGeneration``).  An edited one runs again: a
      fixed ``Failed`` search from the start, an extended ``Succeeded`` one from its checkpoint
      (a refused edit is recorded and it ends at once).
    * ``start``: anything else (new, or ``Pending``/``Running`` after a controller restart).
    """
    if event_type == "DELETED" or obj["metadata"].get("deletionTimestamp"):
        return "stop"
    if running:
        return "observe"
    status = obj.get("status") or {}
    ended = status.get("phase") in ("Succeeded", "Failed")
    if ended and int(status.get("observedGeneration") or 0) >= int(obj["metadata"].get("generation") or 0):
        return "skip"
    return "start"


class Controller:
    def __init__(
        self,
        *,
        kube: Kube,
        metrics: Metrics,
        namespace: str | None,
        trainer_command: list[str],
        store_policy: StorePolicy = StorePolicy(),
        trainer_defaults: dict | None = None,
        default_parallelism: int | None = None,
    ):
        self.kube = kube
        self.default_parallelism = default_parallelism
        self.metrics = metrics
        self.namespace = namespace
        self.trainer_command = trainer_command
        self.store_policy = store_policy
        self.trainer_defaults = trainer_defaults or {}
        self.runners: dict[str, SearchRunner] = {}  # by uid
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.heartbeat = time.monotonic()  # the last list, watch event or watch window end

    @property
    def watch_stalled(self) -> bool:
        return self.ready.is_set() and time.monotonic() - self.heartbeat > STALL_S

    def handle(self, event_type: str, obj: Obj) -> None:
        uid = obj["metadata"]["uid"]
        runner = self.runners.get(uid)
        action = decide(event_type, obj, running=runner is not None)
        if action == "observe" and runner.done:
            # The loop ended here; only an edited spec (a Failed search fixed by the user) runs
            # again.  Stale events from our own earlier status patches must not restart it.
            edited = int(obj["metadata"].get("generation") or 0) > runner.generation
            action = decide(event_type, obj, running=False) if edited else "skip"
        if action == "stop":
            if runner is not None:
                runner.stop()
                self.runners.pop(uid, None)
                self.metrics.forget(namespace=runner.namespace, search=runner.name)
                LOG.info("%s/%s deleted: loop stopped", runner.namespace, runner.name)
        elif action == "observe":
            runner.observe(obj)
        elif action == "start":
            runner = SearchRunner(
                obj,
                kube=self.kube,
                metrics=self.metrics,
                trainer_command=self.trainer_command,
                store_policy=self.store_policy,
                trainer_defaults=self.trainer_defaults,
                default_parallelism=self.default_parallelism,
            )
            self.runners[uid] = runner
            LOG.info("%s/%s: starting its search loop", runner.namespace, runner.name)
            runner.start()

    def relist(self) -> str:
        """List every search, handle each, forget the ones gone; returns the list's resourceVersion."""
        items, version = self.kube.list_searches(namespace=self.namespace)
        seen = {item["metadata"]["uid"] for item in items}
        for uid in list(self.runners):
            if uid not in seen:
                self.handle("DELETED", self.runners[uid].obj)
        for item in items:
            self.handle("ADDED", item)
        self.ready.set()
        return version

    def run(self) -> None:
        """Serve until ``stopping`` is set."""
        version = None
        while not self.stopping.is_set():
            try:
                if version is None:
                    version = self.relist()
                    self.heartbeat = time.monotonic()
                for event in self.kube.watch_searches(
                    namespace=self.namespace, resource_version=version, timeout_s=WATCH_WINDOW_S
                ):
                    self.heartbeat = time.monotonic()
                    version = event["object"]["metadata"].get("resourceVersion", version)
                    if event["type"] != "BOOKMARK":
                        self.handle(event["type"], event["object"])
                    if self.stopping.is_set():
                        break
                self.heartbeat = time.monotonic()
            except Gone:
                LOG.info("watch expired (410 Gone): listing again")
                version = None
            except KubeError as err:
                LOG.warning("watch broke: %s; resuming from %s", err, version)
                self.stopping.wait(RETRY_S)
        self.stop_all()

    def stop_all(self) -> None:
        """Stop every loop (between steps or Job events) and wait a little for them."""
        for runner in list(self.runners.values()):
            runner.stop()
        for runner in list(self.runners.values()):
            runner.thread.join(timeout=15)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="epnas controller", description="Run ArchitectureSearch objects as one Kubernetes Job per child."
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", help="watch only this namespace (needs only a Role there)")
    scope.add_argument(
        "--all-namespaces", action="store_true", help="watch every namespace (the default; needs the ClusterRole)"
    )
    p.add_argument(
        "--metrics-port", type=int, default=8080, help="port of /metrics, /healthz and /readyz (0: any free port)"
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config, else $KUBECONFIG)")
    p.add_argument(
        "--trainer-command",
        default=shlex.join(TRAINER_COMMAND),
        help="the trainer container's command, split like a shell would (default: %(default)s)",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="log level")
    p.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hold a coordination.k8s.io Lease before running searches, so that of several replicas one leads (default: on)",
    )
    p.add_argument(
        "--leader-election-namespace",
        help="namespace of the Lease (default: $POD_NAMESPACE, the pod's own namespace, else default)",
    )
    p.add_argument("--leader-election-id", default="epnas-controller", help="name of the Lease (default: %(default)s)")
    p.add_argument(
        "--lease-duration",
        type=float,
        default=15.0,
        help="seconds a standby waits on a silent leader (default: %(default)s)",
    )
    p.add_argument(
        "--renew-deadline",
        type=float,
        default=10.0,
        help="seconds a leader keeps trying to renew before it stops (default: %(default)s)",
    )
    p.add_argument(
        "--retry-period", type=float, default=2.0, help="seconds between election attempts (default: %(default)s)"
    )
    p.add_argument(
        "--trainer-defaults",
        default="{}",
        metavar="JSON",
        help="the installation's spec.trainer defaults (camelCase fields, e.g. the GPU pool's image, resources, "
        "nodeSelector, tolerations, priorityClassName); a search's own fields win",
    )
    p.add_argument(
        "--default-parallelism",
        type=positive_int,
        metavar="N",
        help="children of a step in flight at once for a search without spec.parallelism, e.g. the GPU pool's size "
        "(default: the whole step); a search's own spec.parallelism wins",
    )
    p.add_argument(
        "--allowed-store",
        action="append",
        default=[],
        metavar="URI",
        help="a store URI prefix searches may use (s3://bucket/prefix); repeat for several (default: any)",
    )
    p.add_argument(
        "--allowed-endpoint",
        action="append",
        default=[],
        metavar="URL",
        help="an S3 endpoint searches may use (https://minio.example:9000); repeat for several (default: any)",
    )
    return p.parse_args(argv)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def trainer_defaults_arg(text: str) -> dict:
    """``--trainer-defaults``: a JSON object of ``spec.trainer`` fields, checked against the model;
    anything else raises ``InvalidInput`` naming the flag and the fields."""
    try:
        defaults = json.loads(text)
    except ValueError as err:
        raise InvalidInput(f"--trainer-defaults: not JSON: {err}") from None
    if not isinstance(defaults, dict):
        raise InvalidInput("--trainer-defaults: must be a JSON object of spec.trainer fields")
    try:
        Trainer.model_validate(defaults)
    except pydantic.ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in err.errors())
        raise InvalidInput(f"--trainer-defaults: {problems}") from None
    return defaults


def lease_namespace(flag: str | None) -> str:
    """``--leader-election-namespace``, else ``$POD_NAMESPACE``, else the pod's own namespace, else ``default``."""
    if flag:
        return flag
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def identity() -> str:
    """This replica in the Lease: ``$POD_NAME`` (else the host name) and a random suffix,
    so a restarted process never mistakes its predecessor's Lease for its own."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def allow_deep_objects() -> None:
    """Raise the recursion limit to ``RECURSION_LIMIT``: every object the API server keeps then
    decodes, and one nested too deeply fails ``InvalidSpec`` (``controller.runner.too_deep``)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))


def main(argv: list[str] | None = None) -> int:
    """Run the controller with ``argv`` (default ``sys.argv[1:]``) until a signal or a lost Lease;
    return the exit code.  The one place an ``EpnasError`` becomes its lines on stderr and its
    exit code; any other exception propagates with its traceback."""
    args = parse_args(argv)
    allow_deep_objects()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    try:
        return serve(args)
    except EpnasError as err:
        for line in message_lines(err, PROG):
            print(line, file=sys.stderr)
        return err.exit_code


def serve(args: argparse.Namespace) -> int:
    """Check the flags (``InvalidInput``), then lead (or wait to), watch and run searches until
    SIGTERM/SIGINT (0) or a lost Lease (1)."""
    try:
        lease = LeaseConfig(
            namespace=lease_namespace(args.leader_election_namespace),
            name=args.leader_election_id,
            lease_duration_s=args.lease_duration,
            renew_deadline_s=args.renew_deadline,
            retry_period_s=args.retry_period,
        )
    except ValueError as err:
        raise InvalidInput(f"--lease-duration / --renew-deadline / --retry-period: {err}") from None
    trainer_defaults = trainer_defaults_arg(args.trainer_defaults)
    metrics = Metrics()
    api_client = kube_mod.load_api_client(kubeconfig=args.kubeconfig)
    kube = Kube(api_client, on_error=lambda verb: metrics.api_errors.labels(verb=verb).inc())
    controller = Controller(
        kube=kube,
        metrics=metrics,
        namespace=args.namespace,
        trainer_command=shlex.split(args.trainer_command),
        store_policy=StorePolicy(tuple(args.allowed_store), tuple(args.allowed_endpoint)),
        trainer_defaults=trainer_defaults,
        default_parallelism=args.default_parallelism,
    )
    lost = threading.Event()
    elector: LeaderElector | None = None
    leading = threading.Event()
    if args.leader_elect:

        def stopped_leading() -> None:
            metrics.leader.set(0)
            lost.set()
            controller.stopping.set()
            for runner in list(controller.runners.values()):
                runner.stop()  # no Job is created after this; the main thread exits
            os.kill(os.getpid(), signal.SIGTERM)

        def started_leading() -> None:
            metrics.leader.set(1)
            leading.set()

        elector = LeaderElector(
            kube, lease, identity(), on_started_leading=started_leading, on_stopped_leading=stopped_leading
        )
    else:
        leading.set()

    def health() -> tuple[bool, str]:
        if elector is not None and not elector.healthy:
            return False, "leader election stalled: the Lease could not be read or written"
        if controller.watch_stalled:
            return False, f"the ArchitectureSearch watch made no progress for {STALL_S} s"
        return True, "ok"

    def ready() -> tuple[bool, str]:
        if elector is not None and not elector.is_leader:
            return (
                elector.healthy,
                "standby: another replica leads" if elector.healthy else "standby: the API server is unreachable",
            )
        if not controller.ready.is_set():
            return False, "not ready: no successful list yet"
        return True, "ok: leader" if elector is not None else "ok"

    server = http.serve(port=args.metrics_port, metrics=metrics, ready=ready, health=health)
    LOG.info(
        "serving /metrics, /healthz, /readyz on port %d; watching %s",
        server.server_address[1],
        f"namespace {args.namespace}" if args.namespace else "all namespaces",
    )

    def shutdown(signum, frame) -> None:
        controller.stopping.set()
        raise _Shutdown()  # wakes the main thread out of a blocking watch read

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    started = time.monotonic()
    try:
        if elector is not None:
            LOG.info("waiting to lead: lease %s/%s as %s", lease.namespace, lease.name, elector.identity)
            elector.start()
            while not leading.wait(1.0):
                pass
        controller.run()
    except _Shutdown:
        controller.stop_all()
    if elector is not None and not lost.is_set():
        elector.release()
    server.shutdown()
    LOG.info("stopped after %.0f s%s", time.monotonic() - started, " (lost the leader Lease)" if lost.is_set() else "")
    return FAULT if lost.is_set() else 0
