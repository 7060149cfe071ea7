"""Text <-> tokens for the router: the model's tokenizer and chat template
behind the three calls the front doors need."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from tandem.router.generation import Detokenizer


class TextCodec(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def encode_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]: ...

    def detokenizer(self) -> Detokenizer: ...


class TokenizerCodec:
    """Adapts `tandem.tokenizer.Tokenizer` (the `tokenizers` library, no torch)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    @classmethod
    def from_dir(cls, path: str | Path) -> TokenizerCodec:
        from tandem.tokenizer import Tokenizer

        return cls(Tokenizer.from_dir(path))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text))

    def encode_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        chat = [{"role": role, "content": content} for role, content in messages]
        out = self._tok.apply_chat_template(chat)
        return list(self._tok.encode(out, add_special_tokens=False)) if isinstance(out, str) else list(out)

    def detokenizer(self) -> Detokenizer:
        from tandem.tokenizer import IncrementalDetokenizer

        return _Incremental(IncrementalDetokenizer(self._tok))


class _Incremental:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def add(self, token_ids: Sequence[int]) -> str:
        return str(self._inner.add(list(token_ids)))

    def flush(self) -> str:
        flush = getattr(self._inner, "flush", None)
        return str(flush()) if flush is not None else ""
