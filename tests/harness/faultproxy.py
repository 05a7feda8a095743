"""A fault-injecting HTTP proxy in front of the real kube-apiserver, for resilience tests.

``FaultProxy(control_plane)`` listens on plain HTTP on 127.0.0.1 and forwards every request to
the API server over TLS with the admin client certificate; ``kubeconfig`` is a kubeconfig
that points at it.  Responses are streamed through (chunked), so watches work.

Faults are rules matched in order against ``(method, path)``:

* ``fail(method, path_regex, status, times, forward=False)``: answer ``status`` instead of
  forwarding, ``times`` times.  ``forward=True`` forwards first and then answers ``status``:
  the request *happened* but its answer was lost (a create that timed out).
* ``block(method, path_regex, status, seconds)``: answer ``status`` to every match for the
  next ``seconds`` (an API outage for one kind of call).

``injected`` counts what was injected, per rule name.
"""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import pathlib
import re
import ssl
import threading
import time
import urllib.parse

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "content-length",
}


@dataclasses.dataclass
class Rule:
    name: str
    method: str
    path: re.Pattern
    status: int
    times: int | None = None  # None: until ``until``
    until: float | None = None
    forward: bool = False

    def take(self, method: str, path: str) -> bool:
        if method != self.method or not self.path.search(path):
            return False
        if self.until is not None:
            return time.monotonic() < self.until
        if self.times and self.times > 0:
            self.times -= 1
            return True
        return False


class FaultProxy:
    def __init__(self, control_plane, workdir: pathlib.Path):
        pki = control_plane.pki
        upstream = urllib.parse.urlsplit(control_plane.server)
        self.upstream = (upstream.hostname, upstream.port)
        self.context = ssl.create_default_context(cafile=str(pki.ca_cert))
        self.context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        self.rules: list[Rule] = []
        self.injected: dict[str, int] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                proxy._handle(self)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET  # noqa: N815

            def log_message(self, *args):
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True).start()
        self.kubeconfig = workdir / "proxy-kubeconfig"
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: " + self.url + "\n"
            "contexts:\n- name: proxy\n  context:\n    cluster: proxy\n    user: proxy\ncurrent-context: proxy\n"
            "users:\n- name: proxy\n  user: {}\n"
        )

    # ------------------------------------------------------------ faults

    def fail(self, name: str, method: str, path: str, status: int, *, times: int, forward: bool = False) -> None:
        with self.lock:
            self.rules.append(Rule(name, method, re.compile(path), status, times=times, forward=forward))

    def block(self, name: str, method: str, path: str, status: int, *, seconds: float) -> None:
        with self.lock:
            self.rules.append(Rule(name, method, re.compile(path), status, until=time.monotonic() + seconds))

    def _match(self, method: str, path: str) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.take(method, path):
                    self.injected[rule.name] = self.injected.get(rule.name, 0) + 1
                    return rule
        return None

    def stop(self) -> None:
        self.server.shutdown()

    # ------------------------------------------------------------ forwarding

    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        rule = self._match(request.command, request.path)
        if rule is not None and not rule.forward:
            self._answer_error(request, rule.status)
            return
        connection = http.client.HTTPSConnection(*self.upstream, context=self.context, timeout=600)
        try:
            headers = {
                k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"host", "authorization"}
            }
            connection.request(request.command, request.path, body=body, headers=headers)
            upstream = connection.getresponse()
            with self.lock:
                self.requests.append((request.command, request.path, upstream.status))
            if rule is not None:  # it happened; the answer is lost
                upstream.read()
                self._answer_error(request, rule.status)
                return
            request.send_response(upstream.status)
            for key, value in upstream.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    request.send_header(key, value)
            request.send_header("Transfer-Encoding", "chunked")
            request.end_headers()
            while True:
                chunk = upstream.read1(65536)
                if not chunk:
                    break
                request.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                request.wfile.flush()
            request.wfile.write(b"0\r\n\r\n")
        except (ConnectionError, OSError):
            request.close_connection = True
        finally:
            connection.close()

    @staticmethod
    def _answer_error(request: http.server.BaseHTTPRequestHandler, status: int) -> None:
        body = (
            b'{"kind":"Status","apiVersion":"v1","status":"Failure","message":"injected by the fault proxy","code":%d}'
            % status
        )
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
