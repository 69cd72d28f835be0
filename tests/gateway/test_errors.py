"""The one table of wire statuses covers the whole error vocabulary."""

from __future__ import annotations

import grpc
from chorus.v1.messages_pb2 import ErrorCode

from services.gateway.errors import STATUS, status_of


def test_every_error_code_has_a_grpc_and_an_http_status() -> None:
    codes = set(ErrorCode.values()) - {ErrorCode.ERROR_CODE_UNSPECIFIED}
    assert set(STATUS) == codes
    for code in codes:
        client_fault = STATUS[code].grpc in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert (400 <= STATUS[code].http < 500) == client_fault, ErrorCode.Name(code)


def test_an_unset_code_is_a_fault_of_ours() -> None:
    assert status_of(ErrorCode.ERROR_CODE_UNSPECIFIED).http == 500
