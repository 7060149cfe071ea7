"""The operator's calls into a worker: Drain and SetRole over gRPC, each with a deadline.

A drain can last as long as the longest stream in flight, far longer than one
pass of the scaling loop may hold the pool's lock. So `drain` asks with a
short deadline and reports whether the worker is drained yet: the worker
keeps refusing new work after a call that ran out of time (it stays
draining), and the next pass asks again. Drain is idempotent; so is SetRole
(it drains, which is instant once drained, then switches and admits again).
"""

from __future__ import annotations

import grpc

from tandem.rpc.v1 import worker_pb2, worker_pb2_grpc

CALL_TIMEOUT_S = 2.0


class WorkerCallError(Exception):
    """A worker did not answer, or refused; the message names it."""


async def drain(address: str, timeout_s: float = CALL_TIMEOUT_S) -> bool:
    """True once the worker has nothing in flight; False while it still drains."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        try:
            await stub.Drain(worker_pb2.DrainRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return False
            raise WorkerCallError(
                f"Drain on {address}: {exc.code().name}: {exc.details()}"
            ) from None
    return True


async def set_role(address: str, role: str, timeout_s: float = CALL_TIMEOUT_S) -> str:
    """Switch a drained worker's role; returns the role now in effect."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        try:
            answer = await stub.SetRole(worker_pb2.SetRoleRequest(role=role), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise WorkerCallError(
                f"SetRole({role}) on {address}: {exc.code().name}: {exc.details()}"
            ) from None
    return str(answer.role)
