"""Domain errors -> gRPC status codes: the one place the worker decides this.

The router maps the same codes to HTTP (INVALID_ARGUMENT -> 400,
RESOURCE_EXHAUSTED -> 503 with Retry-After, UNAVAILABLE -> retry elsewhere).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from tandem.sampling import InvalidRequest
from tandem.worker.errors import Draining, NoCapacity, UnknownRequest, WrongRole
from tandem.worker.kv_transfer import BadKVMessage, NoCommonTransport, TransferError

log = logging.getLogger(__name__)

# Most specific first: the first matching class wins.
_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (BadKVMessage, grpc.StatusCode.INVALID_ARGUMENT),
    (NoCapacity, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (WrongRole, grpc.StatusCode.FAILED_PRECONDITION),
    (NoCommonTransport, grpc.StatusCode.FAILED_PRECONDITION),
    (Draining, grpc.StatusCode.UNAVAILABLE),
    (UnknownRequest, grpc.StatusCode.NOT_FOUND),
    # The KV could not reach the decode worker: retry the pair elsewhere.
    (TransferError, grpc.StatusCode.UNAVAILABLE),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status code and message for a domain error; None for anything else."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code, str(exc) or cls.__name__
    return None


@contextlib.asynccontextmanager
async def grpc_errors(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Abort the call with the mapped status when a domain error escapes."""
    try:
        yield
    except Exception as exc:
        mapped = status_for(exc)
        if mapped is None:
            log.exception("unexpected error in a worker call")
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        else:
            await context.abort(*mapped)
