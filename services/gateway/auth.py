"""Who is calling: the API key of every gRPC and HTTP call, checked before any handler runs.

The key's name becomes `owner_var` for the rest of the call; the front door records it on
each request and upload, and serves them to that owner alone. Without keys (no
`CHORUS_API_KEYS`) every caller is the same anonymous owner, "", and the gateway serves
loopback only. A refusal is counted and logged by its reason, never with the token.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway.keys import ApiKeys, KeyRefused
from services.gateway.openai_response import error_body

log = logging.getLogger(__name__)
owner_var: contextvars.ContextVar[str] = contextvars.ContextVar("owner", default="")
REFUSED = Counter(
    "chorus_auth_refused_total",
    "Calls refused for want of a valid API key, by API and reason.",
    ["api", "reason"],
)
# Where a client might put a key by mistake; naming the right header helps more than "missing".
_WRONG_HEADERS = ("x-api-key", "api-key", "x-chorus-api-key", "proxy-authorization")
# Open without a key: probes must reach health checks, and a page must load to ask for a key.
_OPEN_GRPC = "/grpc.health.v1.Health/"
_PROTECTED_HTTP = "/v1/"


class Gate:
    """Turns an `authorization` value into the calling key's name, or refuses the call."""

    def __init__(self, keys: ApiKeys | None) -> None:
        self._keys = keys

    @property
    def required(self) -> bool:
        return self._keys is not None

    def owner(self, headers: Callable[[str], str | None], api: str) -> str:
        """The owner of a call whose header (or metadata) `name` is `headers(name)`."""
        if self._keys is None:
            return ""
        try:
            return self._keys.owner(_bearer(headers))
        except KeyRefused as e:
            REFUSED.labels(api, e.reason).inc()
            log.warning("%s call refused: %s (%s)", api, e, e.reason)
            raise


def _bearer(headers: Callable[[str], str | None]) -> str:
    value = headers("authorization")
    if value is None:
        if any(headers(h) is not None for h in _WRONG_HEADERS):
            raise KeyRefused(
                "wrong_header", "the API key goes in the authorization header as 'Bearer TOKEN'"
            )
        raise KeyRefused("missing", "an API key is required: authorization: Bearer TOKEN")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise KeyRefused("malformed", "the authorization header is not 'Bearer TOKEN'")
    return token.strip()


class GrpcGate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses a gRPC call without a valid key (UNAUTHENTICATED); runs it as its owner."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_OPEN_GRPC):
            return handler
        metadata = details.invocation_metadata or ()
        try:
            owner = self._gate.owner(lambda name: _metadata_value(metadata, name), "grpc")
        except KeyRefused as e:
            refusal = _refusal(str(e))
            return _each_behavior(handler, lambda _b: refusal)
        return _each_behavior(handler, lambda b: _as_owner(b, owner))


def _metadata_value(metadata: Any, name: str) -> str | None:
    for key, value in metadata:
        if key == name:
            return value if isinstance(value, str) else None
    return None


def _each_behavior(handler: Any, wrap: Callable[[Any], Any]) -> Any:
    kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
    return handler._replace(
        **{k: wrap(getattr(handler, k)) for k in kinds if getattr(handler, k) is not None}
    )


def _refusal(message: str) -> Callable[..., Awaitable[None]]:
    async def refuse(_request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return refuse


def _as_owner(behavior: Any, owner: str) -> Any:
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: object, context: object) -> Any:
            owner_var.set(owner)
            async for item in behavior(request, context):
                yield item

        return stream
    if inspect.iscoroutinefunction(behavior):

        async def call(request: object, context: object) -> Any:
            owner_var.set(owner)
            return await behavior(request, context)

        return call
    return behavior


class HttpGate:
    """The same for HTTP: `/v1/` needs `Authorization: Bearer TOKEN` (401 otherwise)."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self._app = app
        self._gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(_PROTECTED_HTTP):
            headers = Headers(scope=scope)
            try:
                owner_var.set(self._gate.owner(headers.get, "openai"))
            except KeyRefused as e:
                body = error_body(str(e), "authentication_error", 401)
                refusal = JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})
                await refusal(scope, receive, send)
                return
        await self._app(scope, receive, send)
