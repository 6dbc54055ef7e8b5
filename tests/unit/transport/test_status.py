"""Status codes <-> the error tree; nothing unplanned leaks to a client."""

from __future__ import annotations

import grpc
import pytest

from edgecloud.errors import (
    AuthError,
    CloudError,
    ContextOverflowError,
    DeadlineExceededError,
    EdgeCloudError,
    InvalidRequestError,
    OverloadedError,
    RemoteError,
    TransportError,
    UnknownAdapterError,
)
from edgecloud.transport import RETRYABLE_CODES, error_from_rpc, service_config, status_for


class FakeRpcError(grpc.RpcError):
    """What grpc.aio raises: code() and details(), but not a grpc.Call."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InvalidRequestError("prompt must not be empty"), grpc.StatusCode.INVALID_ARGUMENT),
        (ContextOverflowError("too long", prompt_tokens=9, context_tokens=8),
         grpc.StatusCode.INVALID_ARGUMENT),
        (UnknownAdapterError("adapter 'x' is not loaded"), grpc.StatusCode.NOT_FOUND),
        (OverloadedError("at capacity"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)  # fmt: skip
def test_planned_errors_keep_their_message(exc: Exception, code: grpc.StatusCode) -> None:
    assert status_for(exc) == (code, str(exc))


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("CUDA OOM at /secret/path.py:12"), CloudError("engine state x"), KeyError("k")],
)
def test_anything_else_is_internal_without_details(exc: Exception) -> None:
    assert status_for(exc) == (grpc.StatusCode.INTERNAL, "internal error")


@pytest.mark.parametrize(
    ("code", "cls", "retryable"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError, False),
        (grpc.StatusCode.NOT_FOUND, UnknownAdapterError, False),
        (grpc.StatusCode.UNAUTHENTICATED, AuthError, False),
        (grpc.StatusCode.PERMISSION_DENIED, AuthError, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, OverloadedError, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError, True),
        (grpc.StatusCode.UNAVAILABLE, TransportError, True),
        (grpc.StatusCode.INTERNAL, RemoteError, False),
        (grpc.StatusCode.UNKNOWN, RemoteError, False),
    ],
)
def test_rpc_errors_translate_into_the_tree(
    code: grpc.StatusCode, cls: type[EdgeCloudError], retryable: bool
) -> None:
    err = error_from_rpc(FakeRpcError(code, "why"), "host:1")
    assert type(err) is cls
    assert err.retryable is retryable


def test_retry_policy_retries_only_retryable_codes() -> None:
    import json

    policy = json.loads(service_config())["methodConfig"][0]["retryPolicy"]
    assert set(policy["retryableStatusCodes"]) == set(RETRYABLE_CODES)
    assert set(RETRYABLE_CODES) == {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}
    assert policy["maxAttempts"] >= 2 and policy["backoffMultiplier"] > 1
