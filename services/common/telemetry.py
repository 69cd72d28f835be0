"""JSON logs carrying the request id, and the Prometheus metrics + health HTTP endpoint."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Histogram, make_asgi_app
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from services.common.http_server import HttpServer
from services.common.tracing import trace_id

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
HEALTH_IDLE_S = 5  # a scraper or probe that connects and sends nothing is let go after this

MESSAGES = Counter(
    "chorus_messages_total",
    "Bus messages handled, by stage and outcome (ok, dead_letter, retry).",
    ["stage", "outcome"],
)
STAGE_SECONDS = Histogram("chorus_stage_seconds", "Time a stage spent on one message.", ["stage"])
ERRORS = Counter(
    "chorus_errors_total", "Requests that failed, by stage and error code.", ["stage", "code"]
)
BUS_REFUSED = Counter(
    "chorus_bus_refused_total",
    "Publishes and subscriptions the NATS server refused this service's user: a permission "
    "its role lacks (wrong credentials for the role, or a role table out of date).",
    ["operation"],
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


class HealthServer:
    """Serves `/metrics`, `/healthz` (process alive) and `/readyz` (connected and consuming) on
    `host:port` (port 0: any free one), concurrently, closing idle connections."""

    def __init__(
        self, host: str, port: int, ready: Callable[[], bool], idle_s: int = HEALTH_IDLE_S
    ) -> None:
        self._metrics = make_asgi_app()
        self._ready = ready
        addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._server = HttpServer(self._app, addr, "CHORUS_METRICS_HOST/PORT", idle_s)

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == "/healthz":
            await PlainTextResponse("ok\n")(scope, receive, send)
        elif path == "/readyz":
            ok = self._ready()
            body = "ready\n" if ok else "not ready\n"
            await PlainTextResponse(body, 200 if ok else 503)(scope, receive, send)
        else:
            await self._metrics(scope, receive, send)
