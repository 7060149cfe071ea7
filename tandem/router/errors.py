"""Router errors and their one mapping to HTTP and gRPC.

Every failure the front door can report is a `RouterError` (or a
`tandem.sampling.InvalidRequest`, which the sampling vocabulary raises);
`http_error` and `grpc_code` are the only places that turn them into wire
statuses, so the HTTP server, the gRPC server and the tests agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc

from tandem.sampling import InvalidRequest


class RouterError(Exception):
    """A failure with an OpenAI-shaped description."""

    status = 500
    error_type = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s


class BadRequest(RouterError):
    status = 400
    error_type = "invalid_request_error"


class ModelNotFound(RouterError):
    status = 404
    error_type = "invalid_request_error"

    def __init__(self, model: str, served: str) -> None:
        super().__init__(
            f"The model {model!r} does not exist; this server serves {served!r}",
            param="model",
            code="model_not_found",
        )


class NotFoundPath(RouterError):
    status = 404
    error_type = "invalid_request_error"


class MethodNotAllowed(RouterError):
    status = 405
    error_type = "invalid_request_error"


class DeadlineRejected(RouterError):
    """Admission control: the request cannot meet its deadline, so it is shed now."""

    status = 429
    error_type = "rate_limit_error"


class Overloaded(DeadlineRejected):
    """Shedding: a queue is full and this request is the least urgent in it."""


class Unavailable(RouterError):
    """No worker of a needed role can take the request right now."""

    status = 503
    error_type = "service_unavailable"


class UpstreamFailed(RouterError):
    """A worker failed while serving the request."""

    status = 502
    error_type = "upstream_error"


@dataclass(frozen=True)
class HttpError:
    status: int
    body: dict[str, object]
    headers: dict[str, str]

    def json_text(self) -> str:
        return json.dumps(self.body)


def http_error(exc: BaseException) -> HttpError:
    """Map any exception to an OpenAI-shaped error response."""
    if isinstance(exc, InvalidRequest):
        exc = BadRequest(str(exc), param=exc.field)
    if not isinstance(exc, RouterError):
        exc = RouterError(f"internal error: {type(exc).__name__}: {exc}")
    headers: dict[str, str] = {}
    if exc.retry_after_s is not None:
        # Retry-After takes whole seconds; never advertise 0 (clients would spin).
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    body: dict[str, object] = {
        "error": {
            "message": exc.message,
            "type": exc.error_type,
            "param": exc.param,
            "code": exc.code if exc.code is not None else exc.status,
        }
    }
    return HttpError(exc.status, body, headers)


_GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_code(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message the router's gRPC service answers with."""
    err = http_error(exc)
    message = str(err.body["error"]["message"])  # type: ignore[index]
    return _GRPC_CODES.get(err.status, grpc.StatusCode.INTERNAL), message


class WorkerDown(UpstreamFailed):
    """The worker could not be reached or died during the call; the router
    marks it down and health-checks it back later."""

    def __init__(self, worker: str, detail: str) -> None:
        super().__init__(f"worker {worker} failed: {detail}", retry_after_s=1)
        self.worker = worker


class WorkerTimeout(UpstreamFailed):
    """A call ran past its deadline: the worker is slow (busy), not known to be gone."""

    status = 504
    error_type = "timeout"


# A busy worker misses deadlines; only a broken connection means it is gone.
_DOWN_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def from_rpc_error(exc: grpc.aio.AioRpcError, worker: str) -> RouterError:
    """A worker's gRPC status -> the router error it means for the client."""
    code, detail = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return BadRequest(detail)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Unavailable(f"worker {worker} has no capacity: {detail}", retry_after_s=1)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return Unavailable(f"worker {worker} cannot take the request now: {detail}", retry_after_s=1)
    if code in _DOWN_CODES:
        return WorkerDown(worker, f"{code.name}: {detail}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return WorkerTimeout(f"worker {worker} did not answer in time: {detail}", retry_after_s=1)
    return UpstreamFailed(f"worker {worker} failed: {code.name}: {detail}")
