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

``controller`` is the click command (``epnas controller`` finds it through the
``epnas.commands`` entry point; ``python -m controller``, the image's entry point, runs it
through ``main``).

Exit codes (``epnas.errors``): 0 stopped by a signal; 2 invalid flags (``InvalidInput``: one
line ``epnas controller: …`` on stderr, no traceback; click's usage errors too: an unknown flag,
a bad value, ``--namespace`` with ``--all-namespaces``); 1 a lost Lease or another
``EpnasError`` fault.  Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

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
from types import SimpleNamespace
from typing import Any, Literal

import click
import pydantic

from controller import http
from controller import kube as kube_mod
from controller.jobs import TRAINER_COMMAND
from controller.kube import Gone, Kube, KubeError, Obj
from controller.leader import LeaderElector, LeaseConfig
from controller.metrics import ControllerMetrics
from controller.runner import SearchRunner
from controller.tenancy import StorePolicy
from epnas.commands import OneLineCommand, run_command
from epnas.errors import FAULT, EpnasError, InvalidInput
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
WatchDecision = Literal["start", "observe", "stop", "skip"]


class _Shutdown(Exception):
    """SIGTERM or SIGINT arrived."""


def decide(event_type: str, obj: Obj, *, running: bool) -> WatchDecision:
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
        metrics: ControllerMetrics,
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
        if action == "observe" and runner is not None and runner.done:
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
        elif action == "observe" and runner is not None:
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


class ControllerCommand(OneLineCommand):
    """The controller's click command: a usage error is one line ``epnas controller: …`` and exit 2;
    ``--namespace`` and ``--all-namespaces`` exclude each other."""

    prog = PROG

    def check(self, ctx: click.Context) -> None:
        if ctx.params.get("namespace") is not None and ctx.params.get("all_namespaces"):
            raise click.UsageError("--all-namespaces: not allowed with --namespace")


@click.command(name="controller", cls=ControllerCommand)
@click.option("--namespace", help="watch only this namespace (needs only a Role there)")
@click.option("--all-namespaces", is_flag=True, help="watch every namespace (the default; needs the ClusterRole)")
@click.option(
    "--metrics-port",
    type=int,
    default=8080,
    show_default=True,
    help="port of /metrics, /healthz and /readyz (0: any free port)",
)
@click.option("--kubeconfig", help="kubeconfig file (default: in-cluster config, else $KUBECONFIG)")
@click.option(
    "--trainer-command",
    default=shlex.join(TRAINER_COMMAND),
    show_default=True,
    help="the trainer container's command, split like a shell would",
)
@click.option(
    "--log-level",
    type=click.Choice(("DEBUG", "INFO", "WARNING", "ERROR")),
    default="INFO",
    show_default=True,
    help="log level",
)
@click.option(
    "--leader-elect/--no-leader-elect",
    default=True,
    help="hold a coordination.k8s.io Lease before running searches, so that of several replicas one leads "
    "(default: on)",
)
@click.option(
    "--leader-election-namespace",
    help="namespace of the Lease (default: $POD_NAMESPACE, the pod's own namespace, else default)",
)
@click.option("--leader-election-id", default="epnas-controller", show_default=True, help="name of the Lease")
@click.option(
    "--lease-duration",
    type=float,
    default=15.0,
    show_default=True,
    help="seconds a standby waits on a silent leader",
)
@click.option(
    "--renew-deadline",
    type=float,
    default=10.0,
    show_default=True,
    help="seconds a leader keeps trying to renew before it stops",
)
@click.option("--retry-period", type=float, default=2.0, show_default=True, help="seconds between election attempts")
@click.option(
    "--trainer-defaults",
    default="{}",
    metavar="JSON",
    help="the installation's spec.trainer defaults (camelCase fields, e.g. the GPU pool's image, resources, "
    "nodeSelector, tolerations, priorityClassName); a search's own fields win",
)
@click.option(
    "--default-parallelism",
    type=click.IntRange(min=1),
    metavar="N",
    help="children of a step in flight at once for a search without spec.parallelism, e.g. the GPU pool's size "
    "(default: the whole step); a search's own spec.parallelism wins",
)
@click.option(
    "--allowed-store",
    multiple=True,
    metavar="URI",
    help="a store URI prefix searches may use (s3://bucket/prefix); repeat for several (default: any)",
)
@click.option(
    "--allowed-endpoint",
    multiple=True,
    metavar="URL",
    help="an S3 endpoint searches may use (https://minio.example:9000); repeat for several (default: any)",
)
@click.pass_context
def controller(ctx: click.Context, **flags: Any) -> None:
    """Run ArchitectureSearch objects: one Kubernetes Job per child, or one Argo Workflow per step
    (`spec.executor: argo`)."""
    ctx.exit(execute(SimpleNamespace(**flags)))


def parse_args(argv: list[str] | None) -> SimpleNamespace:
    """The flags of ``argv`` (default ``sys.argv[1:]``), one attribute each, without running anything.
    A usage error prints its one line and raises ``SystemExit(2)``; ``--help`` prints the help and
    raises ``SystemExit(0)``."""
    try:
        with controller.make_context(PROG, list(sys.argv[1:] if argv is None else argv)) as ctx:
            return SimpleNamespace(**ctx.params)
    except click.exceptions.Exit as stop:
        raise SystemExit(stop.exit_code) from None


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
    """Run the controller with ``argv`` (default ``sys.argv[1:]``) until a signal or a lost Lease,
    as ``python -m controller``; return the exit code (``--help``: 0)."""
    return run_command(controller, argv, "python -m controller")


def execute(args: SimpleNamespace) -> int:
    """Run the controller with the parsed flags ``args``; return the exit code.  The one place an
    ``EpnasError`` becomes its lines on stderr and its exit code; any other exception propagates
    with its traceback."""
    allow_deep_objects()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    try:
        return serve(args)
    except EpnasError as err:
        return controller.report(err)


def serve(args: SimpleNamespace) -> int:
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
    metrics = ControllerMetrics()
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
