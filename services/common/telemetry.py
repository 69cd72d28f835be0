"""JSON logs carrying the request id, and the Prometheus metrics + health HTTP endpoint."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Histogram, make_wsgi_app

from services.common.tracing import trace_id

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

MESSAGES = Counter(
    "chorus_messages_total",
    "Bus messages handled, by stage and outcome (ok, dead_letter, retry).",
    ["stage", "outcome"],
)
STAGE_SECONDS = Histogram("chorus_stage_seconds", "Time a stage spent on one message.", ["stage"])
ERRORS = Counter(
    "chorus_errors_total", "Requests that failed, by stage and error code.", ["stage", "code"]
)


class _JSONFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if request_id := request_id_var.get():
            entry["request_id"] = request_id
        if current_trace := trace_id():
            entry["trace_id"] = current_trace
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    """One JSON object per line on stderr, each with the current request id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JSONFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("nats", "httpx", "openai", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


class HealthServer:
    """Serves `/metrics`, `/healthz` (process alive) and `/readyz` (connected and consuming)."""

    def __init__(self, port: int, ready: Callable[[], bool]) -> None:
        metrics = make_wsgi_app()

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            if path == "/readyz":
                ok = ready()
                start_response("200 OK" if ok else "503 Service Unavailable", [])
                return [b"ready\n" if ok else b"not ready\n"]
            return metrics(environ, start_response)  # type: ignore[no-any-return]

        self._server: WSGIServer = make_server("0.0.0.0", port, app, handler_class=_QuietHandler)
        self.port: int = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
