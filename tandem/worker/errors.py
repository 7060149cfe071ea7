"""Domain errors of the worker engine. The gRPC servicer maps them to status
codes in one place; the offline API lets them propagate."""

from __future__ import annotations

from tandem.sampling import InvalidRequest

__all__ = ["Draining", "EngineError", "InvalidRequest", "NoCapacity", "UnknownRequest", "WrongRole"]


class EngineError(RuntimeError):
    """Base of the engine's own (non-input) errors."""


class NoCapacity(EngineError):
    """The KV pool cannot hold this request right now; retry later or elsewhere."""


class WrongRole(EngineError):
    """The call does not fit this engine's role (e.g. reserve on a prefill engine)."""


class Draining(EngineError):
    """The engine is draining (role change or shutdown) and admits no new work."""


class UnknownRequest(EngineError):
    """No request (or reservation) with that id exists on this engine."""
