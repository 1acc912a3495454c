"""The runner's HTTP endpoints (/health, /metrics in the Prometheus format, /version), bounded so that slow or
many clients cannot keep /health from answering. torch-free, stdlib only."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from inspection.deploy.line.prometheus import label


class BoundedHTTPServer(ThreadingHTTPServer):
    """At most `limit` connections at once, each with `deadline` seconds in all to send its request and take the
    answer (a client trickling a byte at a time cannot hold a slot longer). When every slot is taken, the
    connection that has waited longest for its request is closed to make room: slow clients cannot keep
    /health from answering."""

    daemon_threads = True
    limit = 16
    deadline = 2.0
    request_queue_size = 128  # the kernel's accept backlog: a burst of clients is not dropped while we accept

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._lock = threading.Lock()
        self._open: dict = {}      # socket → when it was accepted, for every connection that holds a slot
        self._reading: set = set()  # those still sending their request (evictable)
        self._closed = threading.Event()
        threading.Thread(target=self._watch, name="http-deadline", daemon=True).start()

    def _watch(self) -> None:
        """One thread cuts every connection past its deadline (not a timer per connection)."""
        while not self._closed.wait(0.1):
            now = time.monotonic()
            with self._lock:
                late = [sock for sock, t0 in self._open.items() if now - t0 > self.deadline]
            for sock in late:
                _cut(sock)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()

    def process_request(self, request, client_address):
        with self._lock:
            if len(self._open) >= self.limit:
                if not self._reading:
                    self.shutdown_request(request)
                    return
                oldest = min(self._reading, key=self._open.get)
                self._forget(oldest)
                _cut(oldest)
            self._open[request] = time.monotonic()
            self._reading.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._forget(request)

    def request_read(self, request) -> None:
        """The request has arrived: the connection is answered, no longer evicted for a newcomer."""
        with self._lock:
            self._reading.discard(request)

    def _forget(self, request) -> None:
        self._open.pop(request, None)
        self._reading.discard(request)


def _cut(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def serve_http(runner) -> ThreadingHTTPServer:
    """/health, /metrics and /version of a LineRunner, served from their own threads."""
    labels = f'station="{label(runner.cfg.station)}"'

    class Handler(BaseHTTPRequestHandler):
        timeout = BoundedHTTPServer.deadline  # per read; the server's deadline bounds the whole request

        def do_GET(self):  # noqa: N802 - http.server's name
            self.server.request_read(self.connection)
            if self.path == "/health":
                body = runner.health()
                self._send(200 if body["status"] == "ok" else 503, json.dumps(body), "application/json")
            elif self.path == "/metrics":
                version = runner.runtime.version
                info = f'# TYPE inspection_model gauge\ninspection_model{{{labels},version="{label(version)}"}} 1\n'
                runner.metrics.set("queue_depth", runner.capture.frames.qsize())
                self._send(200, runner.metrics.render(labels) + info, "text/plain; version=0.0.4")
            elif self.path == "/version":
                self._send(200, json.dumps({"model_version": runner.runtime.version}), "application/json")
            else:
                self._send(404, json.dumps({"error": f"no such endpoint {self.path}"}), "application/json")

        def _send(self, code: int, body: str, ctype: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = BoundedHTTPServer((runner.cfg.http.host, runner.cfg.http.port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
