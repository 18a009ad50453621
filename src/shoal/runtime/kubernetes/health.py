"""The operator's liveness endpoint: ``GET /healthz`` on a port of its own.

The operator is one process of several threads: kopf's handlers in the main
thread, the control loop, the service reconciler, the lease keeper.  Any of
them may end while the others go on (an unexpected exception ends a
thread, not the process), and a process that no longer admits jobs must be
restarted.  The endpoint answers 200 while every thread it watches is alive
and 503 naming those that are not, so the kubelet's liveness probe
(``deploy/deployment.yaml``) restarts the pod.  A standby (leader election)
watches no thread yet and is alive.

It serves nothing else: no state, no names of tenants or jobs, only the
names of Shoal's own threads.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shoal.errors import InputError

PATH = "/healthz"


class Health:
    """The threads the operator cannot run without, and the server that reports them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None

    def watch(self, thread: threading.Thread) -> None:
        """Report the process dead once ``thread`` (started) has ended."""
        with self._lock:
            self._threads.append(thread)

    def forget(self, thread: threading.Thread) -> None:
        """``thread`` ends on purpose (the operator is stopping or standing by)."""
        with self._lock:
            self._threads = [t for t in self._threads if t is not thread]

    def dead(self) -> list[str]:
        """Names of the watched threads that have ended."""
        with self._lock:
            return [t.name for t in self._threads if not t.is_alive()]

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Answer ``GET /healthz`` on ``host:port`` from a thread; the port (0: any).

        Every address by default: the kubelet probes the pod's IP."""
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != PATH:
                    self._answer(404, "not found\n")
                    return
                dead = health.dead()
                if dead:
                    self._answer(503, f"stopped: {', '.join(sorted(dead))}\n")
                else:
                    self._answer(200, "ok\n")

            def _answer(self, code: int, text: str) -> None:
                body = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a probe every few seconds is no news

        try:
            server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:  # in use, or not ours to take: say which, exit 2
            raise InputError(f"health port {port}: cannot listen on {host}:{port} "
                             f"({exc.strerror or exc})", hint="choose another --health-port") from None
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="shoal-health", daemon=True).start()
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
