"""Checks on a request's head that the HTTP server leaves to the app: its HTTP version and the
total size of its headers. A request that fails one gets a plain 4xx/505 before any route."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway.openai_response import error_body

MAX_HEADER_BYTES = 32 * 1024
HTTP_VERSIONS = ("1.0", "1.1")


class HeadGuard:
    def __init__(self, app: ASGIApp, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self._app = app
        self._max = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self._app(scope, receive, send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        if scope.get("http_version") not in HTTP_VERSIONS:
            message = f"HTTP/{scope.get('http_version')} is not served; use HTTP/1.1"
            return _refuse(message, 505)
        size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if size > self._max:
            return _refuse(f"the headers are {size} bytes, over the {self._max}-byte limit", 431)
        return None


def _refuse(message: str, status: int) -> JSONResponse:
    body = error_body(message, "invalid_request_error", status)
    return JSONResponse(body, status, headers={"Connection": "close"})
