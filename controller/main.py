"""``python -m controller`` (``epnas controller``): watch ArchitectureSearch objects, one loop each.

    python -m controller [--namespace NS | --all-namespaces] [--metrics-port 8080]
                         [--kubeconfig PATH] [--trainer-command CMD] [--log-level INFO]

The watch lists once (``/readyz`` turns ready), then watches from the list's resourceVersion,
reconnecting from the last version it saw when a watch ends or breaks, and listing again on
410 Gone.  ``decide`` says what an event means; ``Controller`` does it.  SIGTERM/SIGINT stop
every loop between steps and exit 0.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import threading
import time
from typing import Literal

from controller import http, kube as kube_mod
from controller.jobs import TRAINER_COMMAND
from controller.kube import Gone, Kube, KubeError, Obj
from controller.metrics import Metrics
from controller.runner import SearchRunner

LOG = logging.getLogger("epnas.controller")
WATCH_WINDOW_S = 60
RETRY_S = 2.0
Action = Literal["start", "observe", "stop", "skip"]


class _Shutdown(Exception):
    """SIGTERM or SIGINT arrived."""


def decide(event_type: str, obj: Obj, *, running: bool) -> Action:
    """What to do with an ArchitectureSearch event (pure).

    * ``stop``: the object was deleted or is being deleted.
    * ``observe``: a loop already owns it (spec changes are checked there).
    * ``skip``: it already ended: ``Succeeded`` is never re-run; ``Failed`` is re-run only
      when the spec was edited since (``metadata.generation`` > ``status.observedGeneration``).
    * ``start``: anything else (new, or ``Pending``/``Running`` after a controller restart).
    """
    if event_type == "DELETED" or obj["metadata"].get("deletionTimestamp"):
        return "stop"
    if running:
        return "observe"
    status = obj.get("status") or {}
    if status.get("phase") == "Succeeded":
        return "skip"
    if status.get("phase") == "Failed" and int(status.get("observedGeneration") or 0) >= int(obj["metadata"].get("generation") or 0):
        return "skip"
    return "start"


class Controller:
    def __init__(self, *, kube: Kube, metrics: Metrics, namespace: str | None, trainer_command: list[str]):
        self.kube = kube
        self.metrics = metrics
        self.namespace = namespace
        self.trainer_command = trainer_command
        self.runners: dict[str, SearchRunner] = {}  # by uid
        self.ready = threading.Event()
        self.stopping = threading.Event()

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
                self.metrics.forget(search=runner.name)
                LOG.info("%s/%s deleted: loop stopped", runner.namespace, runner.name)
        elif action == "observe":
            runner.observe(obj)
        elif action == "start":
            runner = SearchRunner(obj, kube=self.kube, metrics=self.metrics, trainer_command=self.trainer_command)
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
                for event in self.kube.watch_searches(namespace=self.namespace, resource_version=version, timeout_s=WATCH_WINDOW_S):
                    version = event["object"]["metadata"].get("resourceVersion", version)
                    if event["type"] != "BOOKMARK":
                        self.handle(event["type"], event["object"])
                    if self.stopping.is_set():
                        break
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
    p = argparse.ArgumentParser(prog="epnas controller", description="Run ArchitectureSearch objects as one Kubernetes Job per child.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", help="watch only this namespace (needs only a Role there)")
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace (the default; needs the ClusterRole)")
    p.add_argument("--metrics-port", type=int, default=8080, help="port of /metrics, /healthz and /readyz (0: any free port)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config, else $KUBECONFIG)")
    p.add_argument("--trainer-command", default=shlex.join(TRAINER_COMMAND),
                   help="the trainer container's command, split like a shell would (default: %(default)s)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="log level")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    metrics = Metrics()
    api_client = kube_mod.load_api_client(kubeconfig=args.kubeconfig)
    kube = Kube(api_client, on_error=lambda verb: metrics.api_errors.labels(verb=verb).inc())
    controller = Controller(kube=kube, metrics=metrics, namespace=args.namespace, trainer_command=shlex.split(args.trainer_command))
    server = http.serve(port=args.metrics_port, metrics=metrics, ready=controller.ready.is_set)
    LOG.info("serving /metrics, /healthz, /readyz on port %d; watching %s", server.server_address[1],
             f"namespace {args.namespace}" if args.namespace else "all namespaces")

    def shutdown(signum, frame) -> None:
        controller.stopping.set()
        raise _Shutdown()  # wakes the main thread out of a blocking watch read

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    started = time.monotonic()
    try:
        controller.run()
    except _Shutdown:
        controller.stop_all()
    server.shutdown()
    LOG.info("stopped after %.0f s", time.monotonic() - started)
    return 0
