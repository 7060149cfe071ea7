"""The synchronous engine: admission, one step at a time, stops, roles and
KV export/import. Not thread-safe; `AsyncEngine` serializes access.

    Scheduler.schedule() -> ScheduleOutput
    ModelRunner.execute(ScheduleOutput) -> sampled tokens
    Scheduler.update(sampled) -> requests with a new token -> stop checks
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tandem.sampling import InvalidRequest, SamplingParams
from tandem.tokenizer import Tokenizer
from tandem.worker import metrics
from tandem.worker.block_pool import BlockPool
from tandem.worker.config import EngineConfig
from tandem.worker.errors import Draining, NoCapacity, UnknownRequest, WrongRole
from tandem.worker.model_runner import ModelRunner
from tandem.worker.outputs import KVChunk, LoadInfo, ModelInfo, Reservation, StepOutput
from tandem.worker.request import NO_URGENCY, Kind, Request, Status, Urgency
from tandem.worker.sampler import SampleSpec
from tandem.worker.scheduler import ScheduleOutput, Scheduler, SchedulerConfig
from tandem.worker.step_budget import StepPolicy
from tandem.worker.stops import StopChecker

log = logging.getLogger(__name__)

KVSink = Callable[[KVChunk], None]


@dataclass(frozen=True)
class StepStats:
    phase: str  # "prefill" (any prompt tokens in the step) or "decode"
    num_tokens: int
    num_seqs: int
    seconds: float


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.role: str = config.role
        self.draining = False
        metrics.watch_state(lambda: self.role, lambda: self.draining, self._reserved_blocks)
        self.runner = ModelRunner(
            config.model,
            dtype=config.dtype,
            device=config.device,
            block_size=config.block_size,
            max_model_len=config.max_model_len,
            num_kv_blocks=config.num_kv_blocks,
            kv_cache_bytes=config.kv_cache_bytes,
            load_format=config.load_format,
            cuda_graph_max_batch=min(config.cuda_graph_max_batch, config.max_num_seqs),
        )
        cfg = self.runner.config
        self.max_model_len = self.runner.max_model_len
        self.pool = BlockPool(self.runner.num_kv_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(
                config.max_num_batched_tokens,
                config.max_num_seqs,
                policy=config.scheduling_policy,
                aging_s=config.priority_aging_s,
                step=StepPolicy(config.tpot_slo_s, config.min_prefill_tokens),
            ),
            self.pool,
        )
        tok_path = Path(config.model) / "tokenizer.json"
        self.tokenizer = Tokenizer.from_dir(config.model) if tok_path.exists() else None
        eos = cfg.eos_token_ids or (self.tokenizer.eos_token_ids if self.tokenizer else ())
        self.model_info = ModelInfo(
            name=Path(config.model).resolve().name,
            max_model_len=self.max_model_len,
            vocab_size=cfg.vocab_size,
            eos_token_ids=tuple(eos),
            block_size=config.block_size,
            num_layers=cfg.num_hidden_layers,
            num_kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            kv_dtype=str(self.runner.dtype).removeprefix("torch."),
        )
        self._generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self._seeded: dict[str, torch.Generator] = {}
        self._stops: dict[str, StopChecker] = {}
        self._sinks: dict[str, KVSink] = {}
        self._reserved: dict[str, tuple[Request, float]] = {}
        self._arrivals = 0
        self.last_step: StepStats | None = None
        metrics.KV_BLOCKS_TOTAL.set(self.pool.num_blocks)

    # ----- admission -----------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        *,
        kv_sink: KVSink | None = None,
        skip_blocks: int = 0,
        urgency: Urgency = NO_URGENCY,
    ) -> None:
        """Queue a request. With `kv_sink`, it is a prefill-only request: it
        stops after the first token and its KV is handed to the sink layer by
        layer as it is computed. `urgency` orders it in the scheduler."""
        if self.draining:
            raise Draining("engine is draining")
        kind = Kind.PREFILL_ONLY if kv_sink is not None else Kind.FULL
        if kind is Kind.FULL and self.role == "prefill":
            raise WrongRole("a prefill worker only runs prefills; send generation to a decode worker")
        if kind is Kind.PREFILL_ONLY and self.role == "decode":
            raise WrongRole("a decode worker does not run remote prefills")
        prompt = self._validate(request_id, prompt_token_ids)
        req = Request(request_id, prompt, self._with_eos(params), self._next_arrival(), kind=kind)
        req.priority, req.deadline = urgency.priority, urgency.deadline
        if kv_sink is not None:
            self._sinks[request_id] = kv_sink
            req.kv_skip_blocks = req.kv_sent_blocks = max(0, skip_blocks)
        self._track(req)
        self.scheduler.add(req)

    def _validate(self, request_id: str, prompt_token_ids: Sequence[int]) -> list[int]:
        if not isinstance(request_id, str) or not request_id:
            raise InvalidRequest("request_id", "must be a non-empty string")
        if request_id in self.scheduler.requests or request_id in self._reserved:
            raise InvalidRequest("request_id", f"{request_id!r} is already in use")
        prompt = list(prompt_token_ids)
        if not prompt:
            raise InvalidRequest("prompt", "must contain at least one token")
        if len(prompt) >= self.max_model_len:
            raise InvalidRequest(
                "prompt",
                f"has {len(prompt)} tokens but the model's context is {self.max_model_len} "
                "(prompt plus at least one generated token)",
            )
        vocab = self.runner.config.vocab_size
        for t in prompt:
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab:
                raise InvalidRequest("prompt", f"token id {t!r} is outside the vocabulary [0, {vocab})")
        need = -(-(len(prompt) + 1) // self.pool.block_size)
        if need > self.pool.num_blocks:
            raise InvalidRequest(
                "prompt", f"needs {need} KV blocks but this worker's pool holds {self.pool.num_blocks}"
            )
        return prompt

    def _with_eos(self, params: SamplingParams) -> SamplingParams:
        if params.eos_token_ids or not self.model_info.eos_token_ids:
            return params
        return replace(params, eos_token_ids=self.model_info.eos_token_ids)

    def _next_arrival(self) -> int:
        self._arrivals += 1
        return self._arrivals

    def _track(self, req: Request) -> None:
        if req.params.seed is not None:
            self._seeded[req.request_id] = torch.Generator(device="cpu").manual_seed(req.params.seed)
        self._stops[req.request_id] = StopChecker(
            req.params,
            self.max_model_len,
            self.tokenizer,
        )

    def _forget(self, request_id: str) -> None:
        self._seeded.pop(request_id, None)
        self._stops.pop(request_id, None)
        self._sinks.pop(request_id, None)

    # ----- abort ---------------------------------------------------------
    def abort(self, request_id: str) -> bool:
        """Free everything the request holds. Idempotent; True if it existed."""
        reserved = self._reserved.pop(request_id, None)
        if reserved is not None:
            self.pool.free(reserved[0].block_ids)
            reserved[0].block_ids = []
        req = self.scheduler.abort(request_id)
        self._forget(request_id)
        return req is not None or reserved is not None

    # ----- stepping ------------------------------------------------------
    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def step(self) -> list[StepOutput]:
        self.last_step = None
        self._expire_reservations()
        sched = self.scheduler.schedule()
        if sched.preempted:
            metrics.PREEMPTIONS.inc(len(sched.preempted))
        if not sched.seqs:
            return self._unschedulable()
        phase = "decode" if sched.decode_only else "prefill"
        t0 = time.perf_counter()
        try:
            sampled = self.runner.execute(sched, self._specs(sched), self._generator, self._layer_hook(sched))
        except Exception as exc:  # a failed step must not take the engine down
            log.exception("engine step failed")
            return self._fail(sched, f"engine step failed: {exc}")
        self.runner.synchronize()
        dt = time.perf_counter() - t0
        self.scheduler.observe(sched, dt)
        metrics.BUSY_SECONDS.inc(dt)
        metrics.STEP_SECONDS.labels(phase).observe(dt)
        metrics.TOKENS.labels(phase).inc(sched.num_tokens)
        self.last_step = StepStats(phase, sched.num_tokens, len(sched.seqs), dt)
        outputs = [self._after_token(req) for req in self.scheduler.update(sampled)]
        self._update_gauges()
        return outputs

    def _specs(self, sched: ScheduleOutput) -> dict[str, SampleSpec]:
        specs = {}
        for s in sched.seqs:
            if not s.sample:
                continue
            req = self.scheduler.requests[s.request_id]
            suppress: tuple[int, ...] = ()
            if len(req.output_token_ids) < req.params.min_tokens:
                eos = () if req.params.ignore_eos else req.params.eos_token_ids
                # Ids outside the vocabulary can never be sampled (stop_token_ids
                # are not bounded by the vocabulary): indexing logits with them
                # would fail the whole step.
                vocab = self.runner.config.vocab_size
                suppress = tuple(t for t in (*eos, *req.params.stop_token_ids) if t < vocab)
            specs[s.request_id] = SampleSpec(req.params, self._seeded.get(s.request_id), suppress)
        return specs

    def _after_token(self, req: Request) -> StepOutput:
        token = req.output_token_ids[-1]
        reason = self._stops[req.request_id].check(req.output_token_ids, req.num_tokens)
        if reason is None and req.kind is Kind.PREFILL_ONLY:
            reason = "prefilled"
        if reason is not None:
            self.scheduler.finish(req, reason)
            self._forget(req.request_id)
        return StepOutput(
            req.request_id, (token,), reason is not None, reason, req.num_prompt_tokens, req.num_cached_tokens
        )

    def _unschedulable(self) -> list[StepOutput]:
        """Nothing could be scheduled although work exists. Usually blocks are
        held by others (running requests, decode reservations) and the queue
        simply waits. Only a request larger than the whole pool is finished,
        rather than waiting forever."""
        if self.scheduler.running or not self.scheduler.waiting:
            return []
        req = self.scheduler.waiting[0]
        if -(-req.num_tokens // self.pool.block_size) <= self.pool.num_blocks:
            return []
        reason = "length" if req.output_token_ids else "error"
        self.scheduler.abort(req.request_id)
        self._forget(req.request_id)
        err = None if reason == "length" else "request does not fit in the KV cache pool"
        return [StepOutput(req.request_id, (), True, reason, req.num_prompt_tokens, req.num_cached_tokens, err)]

    def _fail(self, sched: ScheduleOutput, message: str) -> list[StepOutput]:
        out = []
        for s in sched.seqs:
            req = self.scheduler.requests.get(s.request_id)
            if req is None:
                continue
            self.abort(s.request_id)
            out.append(StepOutput(req.request_id, (), True, "error", req.num_prompt_tokens, 0, message))
        return out

    def _update_gauges(self) -> None:
        for role in ("prefill", "decode", "both"):  # a flipped worker's old role reads 0
            mine = role == self.role
            metrics.REQUESTS_WAITING.labels(role).set(len(self.scheduler.waiting) if mine else 0)
            metrics.REQUESTS_RUNNING.labels(role).set(len(self.scheduler.running) if mine else 0)
        metrics.KV_BLOCKS_USED.set(self.pool.num_used)

    # ----- KV export (prefill role) --------------------------------------
    def _layer_hook(self, sched: ScheduleOutput) -> Callable[[int], None] | None:
        bs = self.pool.block_size
        plan: list[tuple[str, int, torch.Tensor]] = []  # (request id, first block index, block ids)
        for s in sched.seqs:
            sink = self._sinks.get(s.request_id)
            if sink is None:
                continue
            req = self.scheduler.requests[s.request_id]
            end = s.start_pos + len(s.token_ids)
            upto = -(-end // bs) if end >= req.num_prompt_tokens else end // bs
            first = max(req.kv_sent_blocks, req.kv_skip_blocks)
            if upto > first:
                plan.append((s.request_id, first, self.runner.block_index(s.block_ids[first:upto])))
                req.kv_sent_blocks = upto
        if not plan:
            return None

        def on_layer_stored(layer: int) -> None:
            for rid, first, index in plan:
                k, v, ready = self.runner.read_blocks(layer, index)
                self._sinks[rid](KVChunk(rid, layer, first, k, v, ready))

        return on_layer_stored

    # ----- KV import (decode role) ---------------------------------------
    def reserve(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        urgency: Urgency = NO_URGENCY,
    ) -> Reservation:
        if self.draining:
            raise Draining("engine is draining")
        if self.role == "prefill":
            raise WrongRole("a prefill worker does not take reservations")
        prompt = self._validate(request_id, prompt_token_ids)
        self._expire_reservations()
        bs = self.pool.block_size
        hits = self.pool.match_prefix(prompt)
        self.pool.take(hits)
        need = -(-(len(prompt) + 1) // bs) - len(hits)
        try:
            fresh = self.pool.allocate(need)
        except NoCapacity:
            self.pool.free(hits)
            raise
        req = Request(request_id, prompt, self._with_eos(params), self._next_arrival(), kind=Kind.REMOTE_PREFILL)
        req.priority = urgency.priority  # the first token is computed elsewhere: no deadline here
        req.status = Status.RESERVED
        req.block_ids = hits + fresh
        req.num_cached_tokens = len(hits) * bs
        self._reserved[request_id] = (req, time.monotonic() + self.config.reservation_ttl_s)
        self._update_gauges()
        return Reservation(request_id, tuple(req.block_ids), len(hits))

    def import_kv(self, chunk: KVChunk) -> None:
        entry = self._reserved.get(chunk.request_id)
        if entry is None:
            raise UnknownRequest(f"no reservation for request {chunk.request_id!r}")
        req = entry[0]
        if not 0 <= chunk.layer < self.runner.config.num_hidden_layers:
            raise InvalidRequest("layer", f"{chunk.layer} is outside [0, {self.runner.config.num_hidden_layers})")
        end = chunk.first_block + chunk.num_blocks
        skip = req.num_cached_tokens // self.pool.block_size
        if chunk.num_blocks and chunk.first_block < skip:
            # Those blocks come from this worker's prefix cache and may be shared
            # with running requests: a sender must never overwrite them.
            raise InvalidRequest(
                "first_block", f"{chunk.first_block} is inside the {skip} blocks this worker already holds"
            )
        if chunk.first_block < 0 or end > len(req.block_ids):
            raise InvalidRequest("first_block", f"blocks [{chunk.first_block}, {end}) exceed the reservation of {len(req.block_ids)}")
        self.runner.write_blocks(chunk.layer, req.block_ids[chunk.first_block : end], chunk.k, chunk.v)

    def start_decode(self, request_id: str, first_token_id: int) -> StepOutput | None:
        """Continue a reserved request from its first token. Returns a final
        output if that token already ends the request, else None (tokens follow
        from step())."""
        entry = self._reserved.pop(request_id, None)
        if entry is None:
            raise UnknownRequest(f"no reservation for request {request_id!r}")
        req = entry[0]
        if not 0 <= first_token_id < self.runner.config.vocab_size:
            self.pool.free(req.block_ids)
            raise InvalidRequest("first_token_id", f"{first_token_id} is outside the vocabulary")
        req.num_computed_tokens = req.num_prompt_tokens
        req.output_token_ids.append(first_token_id)
        self.pool.cache_blocks(req.block_ids, req.prompt_token_ids, 0, req.num_prompt_tokens // self.pool.block_size)
        self._track(req)
        reason = self._stops[request_id].check(req.output_token_ids, req.num_tokens)
        if reason is not None:
            self.pool.free(req.block_ids)
            req.block_ids = []
            self._forget(request_id)
            return StepOutput(request_id, (), True, reason, req.num_prompt_tokens, req.num_cached_tokens)
        self.scheduler.add_running(req)
        return None

    def _expire_reservations(self) -> None:
        now = time.monotonic()
        for rid in [r for r, (_, deadline) in self._reserved.items() if deadline < now]:
            log.warning("reservation %s expired unclaimed; freeing its blocks", rid)
            self.abort(rid)

    # ----- introspection and roles ---------------------------------------
    def load(self, prompt_token_ids: Sequence[int] | None = None) -> tuple[LoadInfo, int]:
        hits = 0
        if prompt_token_ids:
            hits = len(self.pool.match_prefix(list(prompt_token_ids))) * self.pool.block_size
        info = LoadInfo(
            role=self.role,
            waiting=len(self.scheduler.waiting),
            running=len(self.scheduler.running) + len(self._reserved),
            kv_blocks_total=self.pool.num_blocks,
            kv_blocks_used=self.pool.num_used,
            kv_blocks_free=self.pool.num_free,
            draining=self.draining,
        )
        return info, hits

    def _reserved_blocks(self) -> int:
        # Called from the metrics thread (also while __init__ still loads the model):
        # list() copies the values in one step.
        held = getattr(self, "_reserved", {})
        return sum(len(req.block_ids) for req, _ in list(held.values()))

    def idle(self) -> bool:
        return not self.scheduler.has_work() and not self._reserved

    def set_role(self, role: str) -> None:
        """Switch role; the caller drains first (AsyncEngine.set_role)."""
        if role not in ("prefill", "decode", "both"):
            raise InvalidRequest("role", f"must be prefill, decode or both, got {role!r}")
        if not self.idle():
            raise Draining("role change needs an idle engine; drain first")
        if role != self.role:
            metrics.ROLE_SWITCHES.labels(role).inc()
        self.role = role
