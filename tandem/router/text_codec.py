"""Text <-> tokens for the router: the model's tokenizer and chat template
behind the three calls the front doors need."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from tandem.router.errors import BadRequest
from tandem.router.generation import Detokenizer
from tandem.tokenizer import ChatTemplateError, Tokenizer


class TextCodec(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def encode_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]: ...

    def detokenizer(self, prompt: Sequence[int]) -> Detokenizer: ...


class TokenizerCodec:
    """Adapts `tandem.tokenizer.Tokenizer` (the `tokenizers` library, no torch)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer

    @classmethod
    def from_dir(cls, path: str | Path) -> TokenizerCodec:
        return cls(Tokenizer.from_dir(path))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text)

    def encode_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        chat: list[dict[str, Any]] = [{"role": role, "content": content} for role, content in messages]
        try:
            return self._tok.encode_chat(chat)
        except ChatTemplateError as exc:
            raise BadRequest(f"messages cannot be rendered with the model's chat template: {exc}",
                             param="messages") from None

    def detokenizer(self, prompt: Sequence[int]) -> Detokenizer:
        # The prompt's tail is left context, so a first token's leading space decodes right.
        return self._tok.detokenizer(context_ids=prompt)
