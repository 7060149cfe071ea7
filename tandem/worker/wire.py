"""Protobuf <-> engine dataclasses. The servicer converts at its edge with
these pure functions; nothing behind it sees a protobuf message."""

from __future__ import annotations

import math

from tandem.rpc.v1 import worker_pb2
from tandem.sampling import InvalidRequest, SamplingParams
from tandem.worker.kv_transfer import KVLayout, TransferTarget
from tandem.worker.outputs import LoadInfo, ModelInfo, StepOutput
from tandem.worker.request import Urgency

#: Priorities are the router's class values; beyond this they are surely a mistake.
MAX_ABS_PRIORITY = 1_000_000


def sampling_from_pb(pb: worker_pb2.SamplingParams) -> SamplingParams:
    """Absent optional fields keep SamplingParams' defaults (0 is a real value)."""
    kwargs: dict[str, object] = {}
    for name in ("max_tokens", "temperature", "top_k", "top_p", "seed", "min_tokens"):
        if pb.HasField(name):
            kwargs[name] = getattr(pb, name)
    return SamplingParams(
        stop_token_ids=tuple(pb.stop_token_ids),
        stop=tuple(pb.stop),
        ignore_eos=pb.ignore_eos,
        **kwargs,  # type: ignore[arg-type]
    )


def sampling_to_pb(p: SamplingParams) -> worker_pb2.SamplingParams:
    return worker_pb2.SamplingParams(
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        seed=p.seed,
        stop_token_ids=p.stop_token_ids,
        stop=p.stop,
        ignore_eos=p.ignore_eos,
        min_tokens=p.min_tokens,
    )


def urgency_from_pb(pb: worker_pb2.Urgency, now: float) -> Urgency:
    """The wire's relative deadline becomes one on this engine's clock (`now`)."""
    if abs(pb.priority) > MAX_ABS_PRIORITY:
        raise InvalidRequest(
            "urgency.priority",
            f"{pb.priority} is outside [-{MAX_ABS_PRIORITY}, {MAX_ABS_PRIORITY}]",
        )
    left = pb.ttft_seconds_left
    if left != left:  # NaN
        raise InvalidRequest("urgency.ttft_seconds_left", "must be a number")
    return Urgency(pb.priority, now + left if left > 0 else math.inf)


def request_id(value: str) -> str:
    if not value:
        raise InvalidRequest("request_id", "must be a non-empty string")
    return value


def token_chunk(out: StepOutput) -> worker_pb2.TokenChunk:
    return worker_pb2.TokenChunk(
        request_id=out.request_id,
        token_ids=out.new_token_ids,
        finished=out.finished,
        finish_reason=out.finish_reason or "",
        num_prompt_tokens=out.num_prompt_tokens,
        num_cached_tokens=out.num_cached_tokens,
        error=out.error or "",
    )


def model_info_pb(info: ModelInfo) -> worker_pb2.ModelInfo:
    return worker_pb2.ModelInfo(
        name=info.name,
        max_model_len=info.max_model_len,
        vocab_size=info.vocab_size,
        eos_token_ids=info.eos_token_ids,
        block_size=info.block_size,
        num_layers=info.num_layers,
        num_kv_heads=info.num_kv_heads,
        head_dim=info.head_dim,
        kv_dtype=info.kv_dtype,
    )


def load_pb(info: LoadInfo, prefix_hit_tokens: int) -> worker_pb2.LoadResponse:
    return worker_pb2.LoadResponse(
        role=info.role,
        waiting=info.waiting,
        running=info.running,
        kv_blocks_total=info.kv_blocks_total,
        kv_blocks_used=info.kv_blocks_used,
        kv_blocks_free=info.kv_blocks_free,
        draining=info.draining,
        prefix_hit_tokens=prefix_hit_tokens,
    )


def kv_layout(info: ModelInfo) -> KVLayout:
    return KVLayout(
        num_layers=info.num_layers,
        block_size=info.block_size,
        num_kv_heads=info.num_kv_heads,
        head_dim=info.head_dim,
        dtype=info.kv_dtype,
    )


def target_from_pb(pb: worker_pb2.KVTarget) -> TransferTarget:
    try:
        return TransferTarget(
            address=pb.address,
            request_id=pb.request_id,
            block_ids=tuple(pb.block_ids),
            skip_blocks=pb.skip_blocks,
            transport=pb.transport,
            num_streams=pb.num_streams,
        )
    except ValueError as exc:  # TransferTarget names the field
        raise InvalidRequest("target", str(exc)) from exc
