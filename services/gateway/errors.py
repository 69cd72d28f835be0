"""One error vocabulary for the front door: each `ErrorCode` maps to a gRPC status and an HTTP
status in the one table below, which both adapters read.

`RequestError` is a call the front door turns down before or while it waits; a failed
pipeline ends with a `PipelineError` carrying the same codes.
"""

from __future__ import annotations

from typing import NamedTuple

import grpc
from chorus.v1.messages_pb2 import ErrorCode, PipelineError

from services.common.events import code_name


class WireStatus(NamedTuple):
    grpc: grpc.StatusCode
    http: int
    openai_type: str  # the `error.type` OpenAI clients read


STATUS: dict[ErrorCode.ValueType, WireStatus] = {
    ErrorCode.ERROR_CODE_INVALID_REQUEST: WireStatus(
        grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"
    ),
    ErrorCode.ERROR_CODE_NOT_FOUND: WireStatus(
        grpc.StatusCode.NOT_FOUND, 404, "invalid_request_error"
    ),
    ErrorCode.ERROR_CODE_PAYLOAD_TOO_LARGE: WireStatus(
        grpc.StatusCode.INVALID_ARGUMENT, 413, "invalid_request_error"
    ),
    ErrorCode.ERROR_CODE_LLM_UNAVAILABLE: WireStatus(
        grpc.StatusCode.UNAVAILABLE, 503, "server_error"
    ),
    ErrorCode.ERROR_CODE_DEADLINE: WireStatus(
        grpc.StatusCode.DEADLINE_EXCEEDED, 504, "server_error"
    ),
    # 499 is the de-facto "client closed request"; a client that cancelled reads it as such.
    ErrorCode.ERROR_CODE_CANCELLED: WireStatus(grpc.StatusCode.CANCELLED, 499, "cancelled"),
    ErrorCode.ERROR_CODE_INTERNAL: WireStatus(grpc.StatusCode.INTERNAL, 500, "server_error"),
    ErrorCode.ERROR_CODE_UNAUTHENTICATED: WireStatus(
        grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"
    ),
    ErrorCode.ERROR_CODE_ALREADY_EXISTS: WireStatus(
        grpc.StatusCode.ALREADY_EXISTS, 409, "invalid_request_error"
    ),
    ErrorCode.ERROR_CODE_RESOURCE_EXHAUSTED: WireStatus(
        grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"
    ),
}


def status_of(code: ErrorCode.ValueType) -> WireStatus:
    """The wire status of a code; an unknown or unset one is a fault of ours."""
    return STATUS.get(code, STATUS[ErrorCode.ERROR_CODE_INTERNAL])


class RequestError(Exception):
    """A call the front door turns down; the message names the field at fault."""

    def __init__(
        self,
        message: str,
        code: ErrorCode.ValueType = ErrorCode.ERROR_CODE_INVALID_REQUEST,
        *,
        retry_after_s: int | None = None,  # when to try again (an overload), for the caller
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s


class PipelineFailed(RequestError):
    """The request ran and ended with a `PipelineError`."""

    def __init__(self, error: PipelineError) -> None:
        super().__init__(f"{error.stage}: {code_name(error.code)}: {error.message}", error.code)
        self.error = error
