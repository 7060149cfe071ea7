"""When does a request stop? Pure except for the tokenizer used to detect
stop strings."""

from __future__ import annotations

from typing import Protocol

from tandem.sampling import SamplingParams


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class StopChecker:
    """Checks, after each new token, EOS, stop token ids, stop strings,
    max_tokens and the context limit (in that order of precedence)."""

    def __init__(self, params: SamplingParams, max_model_len: int, decoder: Decoder | None) -> None:
        self.params = params
        self.max_model_len = max_model_len
        self.decoder = decoder if params.stop else None
        self._longest_stop = max((len(s) for s in params.stop), default=0)
        self._checked_chars = 0

    def check(self, output_ids: list[int], num_tokens: int) -> str | None:
        p = self.params
        token = output_ids[-1]
        if len(output_ids) >= p.min_tokens:
            if not p.ignore_eos and token in p.eos_token_ids:
                return "stop"
            if token in p.stop_token_ids:
                return "stop"
            if self.decoder is not None and self._stop_string_hit(output_ids):
                return "stop"
        if len(output_ids) >= p.max_tokens or num_tokens >= self.max_model_len:
            return "length"
        return None

    def _stop_string_hit(self, output_ids: list[int]) -> bool:
        assert self.decoder is not None
        text = self.decoder.decode(output_ids)
        # Only text that is new since the last check can complete a stop string.
        start = max(0, self._checked_chars - self._longest_stop + 1)
        self._checked_chars = len(text)
        tail = text[start:]
        return any(s in tail for s in self.params.stop)


def truncate_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """The text up to (not including) the earliest stop string, as OpenAI returns it."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]
