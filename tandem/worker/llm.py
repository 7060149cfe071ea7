"""Offline batch generation, in the shape users know from vLLM:

    from tandem import LLM, SamplingParams
    llm = LLM("path/to/model")
    outs = llm.generate(["Hello"], SamplingParams(max_tokens=16, temperature=0))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tandem.sampling import InvalidRequest, SamplingParams
from tandem.worker.config import EngineConfig
from tandem.worker.engine import Engine
from tandem.worker.stops import truncate_at_stop

Prompt = str | Sequence[int]


@dataclass(frozen=True)
class CompletionOutput:
    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str | None
    num_cached_tokens: int
    error: str | None = None


class LLM:
    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        block_size: int = 16,
        num_kv_blocks: int | None = None,
        max_num_batched_tokens: int = 2048,
        max_num_seqs: int = 128,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        seed: int = 0,
    ) -> None:
        self.engine = Engine(
            EngineConfig(
                model=model,
                dtype=dtype,
                device=device,
                block_size=block_size,
                num_kv_blocks=num_kv_blocks,
                max_num_batched_tokens=max_num_batched_tokens,
                max_num_seqs=max_num_seqs,
                max_model_len=max_model_len,
                enable_prefix_caching=enable_prefix_caching,
                seed=seed,
            )
        )
        self._counter = 0

    @property
    def tokenizer(self):  # type: ignore[no-untyped-def]
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[CompletionOutput]:
        """Generate for every prompt (all submitted together, batched
        continuously); results come back in prompt order."""
        batch = _as_batch(prompts)
        plist = _as_params(params, len(batch))
        ids: list[str] = []
        token_lists: list[list[int]] = []
        try:
            for prompt, p in zip(batch, plist, strict=True):
                token_ids = self._encode(prompt)
                self._counter += 1
                rid = f"llm-{self._counter}"
                self.engine.add_request(rid, token_ids, p)
                ids.append(rid)
                token_lists.append(token_ids)
        except BaseException:
            # A bad prompt rejects the whole call: the ones admitted before it
            # must not run on into the next generate() (unknown ids there).
            for rid in ids:
                self.engine.abort(rid)
            raise
        results: dict[str, list[int]] = {rid: [] for rid in ids}
        final: dict[str, tuple[str | None, int, str | None]] = {}
        try:
            while len(final) < len(ids):
                for out in self.engine.step():
                    results[out.request_id].extend(out.new_token_ids)
                    if out.finished:
                        final[out.request_id] = (out.finish_reason, out.num_cached_tokens, out.error)
        except BaseException:
            # Interrupted (Ctrl-C, an error): leave nothing running into the next call.
            for rid in ids:
                if rid not in final:
                    self.engine.abort(rid)
            raise
        return [
            self._output(token_lists[i], results[rid], final[rid], plist[i]) for i, rid in enumerate(ids)
        ]

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidRequest("prompt", "text prompts need tokenizer.json in the model folder")
            return list(self.tokenizer.encode(prompt))
        return list(prompt)

    def _output(
        self,
        prompt_ids: list[int],
        token_ids: list[int],
        final: tuple[str | None, int, str | None],
        params: SamplingParams,
    ) -> CompletionOutput:
        text = ""
        if self.tokenizer is not None:
            text = self.tokenizer.decode(token_ids)
            if params.stop:
                text = truncate_at_stop(text, params.stop)
        reason, cached, error = final
        return CompletionOutput(tuple(prompt_ids), tuple(token_ids), text, reason, cached, error)


def _as_batch(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    seq = list(prompts)
    if seq and all(isinstance(t, int) and not isinstance(t, bool) for t in seq):
        return [[int(t) for t in seq]]  # type: ignore[arg-type]  # a single token-id prompt
    return seq  # type: ignore[return-value]


def _as_params(params: SamplingParams | Sequence[SamplingParams] | None, n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * n
    if isinstance(params, SamplingParams):
        return [params] * n
    plist = list(params)
    if len(plist) != n:
        raise InvalidRequest("params", f"got {len(plist)} sampling params for {n} prompts")
    return plist
