"""``/metrics`` (Prometheus) and ``/healthz`` for every long-running component, on a configurable port."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


def _always_healthy() -> tuple[bool, dict[str, Any]]:
    return True, {}


class MetricsServer:
    """A small threaded HTTP server: ``GET /metrics`` and ``GET /healthz`` (200 healthy, 503 not)."""

    def __init__(
        self,
        port: int,
        bind: str = "0.0.0.0",
        health: HealthCheck = _always_healthy,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._health = health
        self._registry = registry
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(server._registry)
                    self._send(200, CONTENT_TYPE_LATEST, body)
                elif path in ("/healthz", "/readyz"):
                    try:
                        ok, detail = server._health()
                    except Exception as exc:  # a failing check is unhealthy, never a crash
                        ok, detail = False, {"error": str(exc)}
                    body = json.dumps({"ok": ok, **detail}, default=str).encode()
                    self._send(200 if ok else 503, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = ThreadingHTTPServer((bind, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self._httpd.server_address[0], self.port)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve_metrics(
    port: int, bind: str = "0.0.0.0", health: HealthCheck = _always_healthy
) -> MetricsServer | None:
    """Start the metrics server unless ``port`` is 0 (off)."""
    if not port:
        return None
    return MetricsServer(port, bind, health).start()
