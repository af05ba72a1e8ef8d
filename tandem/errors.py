"""Structured errors across gRPC: a status code plus an ``ErrorDetail`` in trailing metadata."""

from __future__ import annotations

from typing import NoReturn

import grpc

from tandem.v1 import common_pb2

ERROR_METADATA_KEY = "tandem-error-bin"
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"

_STATUS_OF = {
    common_pb2.ERROR_CODE_INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED: grpc.StatusCode.INVALID_ARGUMENT,
    common_pb2.ERROR_CODE_MODEL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    common_pb2.ERROR_CODE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    common_pb2.ERROR_CODE_INTERNAL: grpc.StatusCode.INTERNAL,
    common_pb2.ERROR_CODE_RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    common_pb2.ERROR_CODE_DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class TandemError(Exception):
    """An error with a category that every transport knows how to present."""

    def __init__(self, code: common_pb2.ErrorCode.ValueType, message: str, param: str = "",
                 retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.retry_after_ms = retry_after_ms
        """When the client should try again (a refusal at capacity); None: not said."""

    def detail(self) -> common_pb2.ErrorDetail:
        return common_pb2.ErrorDetail(code=self.code, message=self.message, param=self.param)

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return _STATUS_OF.get(self.code, grpc.StatusCode.UNKNOWN)


def invalid(message: str, param: str = "") -> TandemError:
    return TandemError(common_pb2.ERROR_CODE_INVALID_REQUEST, message, param)


async def abort_with(context: grpc.aio.ServicerContext, error: TandemError) -> NoReturn:
    """Ends the call with the error's status and its detail in the trailers."""
    metadata: list[tuple[str, str | bytes]] = [
        (ERROR_METADATA_KEY, error.detail().SerializeToString())]
    if error.retry_after_ms is not None:  # gRPC's own retry pushback (gRFC A6)
        metadata.append((RETRY_PUSHBACK_KEY, str(error.retry_after_ms)))
    context.set_trailing_metadata(tuple(metadata))
    await context.abort(error.grpc_status, error.message)
    raise AssertionError("unreachable")  # context.abort raises


def from_rpc_error(error: grpc.aio.AioRpcError) -> TandemError:
    """The structured error a peer sent, or one derived from the status code."""
    for key, value in error.trailing_metadata() or ():
        if key == ERROR_METADATA_KEY and isinstance(value, bytes):
            detail = common_pb2.ErrorDetail.FromString(value)
            return TandemError(detail.code, detail.message, detail.param)
    code = {
        grpc.StatusCode.INVALID_ARGUMENT: common_pb2.ERROR_CODE_INVALID_REQUEST,
        grpc.StatusCode.NOT_FOUND: common_pb2.ERROR_CODE_MODEL_NOT_FOUND,
        grpc.StatusCode.UNAVAILABLE: common_pb2.ERROR_CODE_UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED: common_pb2.ERROR_CODE_DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED: common_pb2.ERROR_CODE_RESOURCE_EXHAUSTED,
    }.get(error.code(), common_pb2.ERROR_CODE_INTERNAL)
    return TandemError(code, error.details() or str(error.code()))
