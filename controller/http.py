"""``/metrics`` (Prometheus text format), ``/healthz`` and ``/readyz`` on one port, in a daemon thread.

``health()`` and ``ready()`` answer ``(ok, why)``: ``/healthz`` fails when the watch or the
leader election has stalled (the kubelet restarts the pod), ``/readyz`` when this replica is
neither a leader that has listed its searches nor a standby in touch with the API server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.metrics import ControllerMetrics

Probe = Callable[[], tuple[bool, str]]


def serve(
    *, port: int, metrics: ControllerMetrics, ready: Probe, health: Probe = lambda: (True, "ok"), host: str = "0.0.0.0"
) -> ThreadingHTTPServer:
    """Start serving; returns the server (``.server_address[1]`` is the port, ``.shutdown()`` stops it)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, why = (health if path == "/healthz" else ready)()
                self._answer(200 if ok else 503, f"{why}\n".encode())
            else:
                self._answer(404, b"not found\n")

        def _answer(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # scrapes are not worth a log line
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
