"""Status codes <-> the error tree; nothing unplanned leaks to a client."""

from __future__ import annotations

import grpc
import pytest

from edgecloud.errors import (
    ActivationError,
    AdapterError,
    AuthError,
    CloudError,
    ContextOverflowError,
    DeadlineExceededError,
    EdgeCloudError,
    InvalidRequestError,
    ModelIntegrityError,
    NotFoundError,
    OverloadedError,
    RemoteError,
    SplitError,
    TransportError,
    UnknownAdapterError,
    UnknownModelError,
)
from edgecloud.transport import (
    RETRYABLE_CODES,
    abort,
    error_from_rpc,
    service_config,
    status_for,
)


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
        (ActivationError("input is truncated"), grpc.StatusCode.INVALID_ARGUMENT),
        (UnknownModelError("unknown model 'x'"), grpc.StatusCode.NOT_FOUND),
        (OverloadedError("at capacity"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        # a part the service forwards to was lost (a Ray Serve replica): as a dead cloud
        (TransportError("the engine replica was lost"), grpc.StatusCode.UNAVAILABLE),
    ],
)  # fmt: skip
def test_planned_errors_keep_their_message(exc: Exception, code: grpc.StatusCode) -> None:
    assert status_for(exc) == (code, str(exc))


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("CUDA OOM at /secret/path.py:12"),
        CloudError("engine state x"),
        RemoteError("upstream said: secret"),
        KeyError("k"),
        ModelIntegrityError("/srv/models/secret.onnx: truncated"),
    ],
)
def test_anything_else_is_internal_without_details(exc: Exception) -> None:
    assert status_for(exc) == (grpc.StatusCode.INTERNAL, "internal error")


@pytest.mark.parametrize(
    ("code", "cls", "retryable"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError, False),
        (grpc.StatusCode.NOT_FOUND, NotFoundError, False),
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


def test_retry_policy_names_its_services_or_covers_every_method() -> None:
    import json

    everything = json.loads(service_config())["methodConfig"][0]
    assert everything["name"] == [{}]
    one = json.loads(service_config(services=["edgecloud.v1.InferenceService"], max_attempts=1))
    assert one["methodConfig"][0]["name"] == [{"service": "edgecloud.v1.InferenceService"}]
    assert one["methodConfig"][0]["retryPolicy"]["maxAttempts"] == 2  # gRPC's minimum


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (UnknownAdapterError("adapter 'x' is not loaded"),
         "unknown adapter: adapter 'x' is not loaded"),
        (UnknownModelError("unknown model 'x'; this service has ['a']"),
         "unknown model 'x'; this service has ['a']"),
        (UnknownModelError("version '2' is not served"), "unknown model: version '2' is not served"),
        (NotFoundError("no such thing"), "no such thing"),
    ],
)  # fmt: skip
def test_not_found_says_which_kind_and_the_client_reads_it_back(
    exc: NotFoundError, message: str
) -> None:
    code, sent = status_for(exc)
    assert (code, sent) == (grpc.StatusCode.NOT_FOUND, message)
    back = error_from_rpc(FakeRpcError(code, sent), "host:1")
    assert type(back) is type(exc)
    assert str(back) == message
    assert isinstance(back, NotFoundError) and not back.retryable


def test_both_unknowns_are_not_found_errors_of_their_own_family() -> None:
    assert issubclass(UnknownAdapterError, NotFoundError)
    assert issubclass(UnknownAdapterError, AdapterError)
    assert issubclass(UnknownModelError, NotFoundError)
    assert issubclass(UnknownModelError, SplitError)


def test_a_foreign_not_found_is_the_base_class() -> None:
    err = error_from_rpc(FakeRpcError(grpc.StatusCode.NOT_FOUND, "Request for unknown model"))
    assert type(err) is NotFoundError
    empty = error_from_rpc(FakeRpcError(grpc.StatusCode.NOT_FOUND, ""), "host:1")
    assert type(empty) is NotFoundError and "NOT_FOUND (host:1)" in str(empty)


class FakeContext:
    """What a handler's grpc.aio context does on abort: remember the status, then raise."""

    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise grpc.RpcError(details)


def test_abort_keeps_the_traceback_in_the_server_log(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import logging

    log = logging.getLogger("edgecloud.test")

    def raised(exc: Exception) -> Exception:
        try:
            raise exc
        except Exception as caught:  # the test wants it with its traceback
            return caught

    context = FakeContext()
    with caplog.at_level(logging.INFO, "edgecloud.test"), pytest.raises(grpc.RpcError):
        asyncio.run(abort(context, raised(RuntimeError("/secret/path")), rpc="RunTail", log=log))
    assert context.status == (grpc.StatusCode.INTERNAL, "internal error")
    assert caplog.records[-1].levelname == "ERROR" and caplog.records[-1].exc_info is not None
    assert "RunTail failed" in caplog.text

    context = FakeContext()
    with caplog.at_level(logging.INFO, "edgecloud.test"), pytest.raises(grpc.RpcError):
        asyncio.run(abort(context, UnknownModelError("unknown model 'x'"), rpc="Infer", log=log))
    assert context.status == (grpc.StatusCode.NOT_FOUND, "unknown model 'x'")
    assert caplog.records[-1].levelname == "INFO" and caplog.records[-1].exc_info is None


def test_unavailable_says_when_the_call_went_as_plain_text() -> None:
    closed = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    plain = error_from_rpc(closed, "127.0.0.1:1", plaintext=True)
    assert type(plain) is TransportError and "plain text" in str(plain)
    assert "plain text" not in str(error_from_rpc(closed, "127.0.0.1:1"))
    denied = error_from_rpc(FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, ""), plaintext=True)
    assert "plain text" not in str(denied)
