"""Health, readiness and Prometheus metrics over HTTP, plus structured (JSON) logs — shared by every service.

Kubernetes probes need ``/healthz`` (the process is alive) and ``/readyz`` (it can do its work: connected,
model loaded), and Prometheus scrapes ``/metrics``. Services register their metrics in the default registry
under the project's metric vocabulary and call ``serve_http`` once; this module owns the HTTP plumbing so no
service writes its own.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

# A POST endpoint a service adds (e.g. the builder's ``/seal``): query parameters and request headers in,
# (status, JSON body, extra response headers) out.
PostRoute = Callable[[dict[str, str], Mapping[str, str]], tuple[int, bytes, dict[str, str]]]

_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, service, and every ``extra=`` field."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "service": self.service,
        }
        payload.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: a service's loop finishes what it has in hand and returns."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logging.getLogger(__name__).info("signal %d: finishing the batch in hand, then exiting", signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return stop


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on a background thread. Port 0 picks a free port.

    ``post_routes`` adds a service's few control endpoints on the same port (one port per pod to expose).
    """

    def __init__(
        self,
        port: int,
        ready: Callable[[], bool] = lambda: True,
        registry: CollectorRegistry = REGISTRY,
        host: str = "0.0.0.0",
        post_routes: Mapping[str, PostRoute] | None = None,
    ) -> None:
        ready_check, metrics_registry, routes = ready, registry, dict(post_routes or {})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/healthz":
                    self._reply(200, b"ok", "text/plain")
                elif self.path == "/readyz":
                    ok = ready_check()
                    self._reply(200 if ok else 503, b"ready" if ok else b"not ready", "text/plain")
                elif self.path == "/metrics":
                    self._reply(200, generate_latest(metrics_registry), CONTENT_TYPE_LATEST)
                else:
                    self._reply(404, b"not found", "text/plain")

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                path, _, query = self.path.partition("?")
                route = routes.get(path)
                if route is None:
                    self._reply(404, b"not found", "text/plain")
                    return
                params = {k: v[-1] for k, v in parse_qs(query).items()}
                status, body, headers = route(params, {k.lower(): v for k, v in self.headers.items()})
                self._reply(status, body, "application/json", headers)

            def _reply(
                self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: keep quiet
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
