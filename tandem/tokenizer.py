"""Text <-> token ids for a Hugging Face-format model folder, without torch or
transformers (the router tokenizes; it must start fast and needs no GPU stack).

Reads `tokenizer.json` (the `tokenizers` library does the work),
`tokenizer_config.json` (special tokens, chat template) and the eos ids of
`config.json`/`generation_config.json`. Encoding, decoding and chat templates
agree with `transformers.AutoTokenizer` on the same folder.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as _Backend

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
_SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")
_CLEAN_UP_BPE = "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"


class TokenizerFormatError(ValueError):
    """A tokenizer folder that cannot be used; the message names the file and field."""


class ChatTemplateError(ValueError):
    """The chat template rejected the messages (or failed to render)."""


@dataclass(frozen=True)
class TokenizerSettings:
    """What `tokenizer_config.json` says beyond the vocabulary itself."""

    special_tokens: dict[str, str]  # "bos_token" -> "<s>", ... (only those set)
    chat_template: str | None
    clean_up_tokenization_spaces: bool
    # transformers skips that clean-up for BPE vocabularies (it deletes real
    # spaces before punctuation) unless this override is set; so do we.
    clean_up_bpe: bool = False


def parse_tokenizer_config(raw: Any, source: str) -> TokenizerSettings:
    if not isinstance(raw, dict):
        raise TokenizerFormatError(f"{source}: expected a JSON object")
    special: dict[str, str] = {}
    for name in _SPECIAL_NAMES:
        value = raw.get(name)
        # Older files store AddedToken objects: {"content": "<s>", "lstrip": false, ...}
        if isinstance(value, dict):
            value = value.get("content")
        if value is None:
            continue
        if not isinstance(value, str):
            raise TokenizerFormatError(f"{source}: field '{name}' must be a string, got {value!r}")
        special[name] = value
    flags = []
    for name in ("clean_up_tokenization_spaces", _CLEAN_UP_BPE):
        value = raw.get(name, False)
        if not isinstance(value, bool):
            raise TokenizerFormatError(f"{source}: field '{name}' must be true or false")
        flags.append(value)
    template = _chat_template(raw.get("chat_template"), source)
    return TokenizerSettings(special, template, flags[0], flags[1])


def _chat_template(value: Any, source: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    # A list of named templates: the one named "default" is the chat template.
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item.get("name") == "default":
                template = item.get("template")
                if isinstance(template, str):
                    return template
        raise TokenizerFormatError(f"{source}: field 'chat_template' has no 'default' template")
    raise TokenizerFormatError(f"{source}: field 'chat_template' must be a string or a list")


def clean_up_tokenization(text: str) -> str:
    """Remove spaces before punctuation and contractions, as transformers does
    when a tokenizer sets `clean_up_tokenization_spaces`."""
    for old, new in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(old, new)
    return text


class Tokenizer:
    def __init__(
        self,
        backend: _Backend,
        settings: TokenizerSettings,
        extra_eos_ids: Sequence[int] = (),
        source: str = "tokenizer",
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.source = source
        self.bos_token_id = self._special_id("bos_token")
        eos = self._special_id("eos_token")
        ids = [*extra_eos_ids, *([] if eos is None else [eos])]
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(ids))
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        is_bpe = type(backend.model).__name__ == "BPE"
        self._clean_up = settings.clean_up_tokenization_spaces and (
            settings.clean_up_bpe or not is_bpe
        )
        self._template = (
            None if settings.chat_template is None else _compile_template(settings.chat_template)
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        folder = Path(path)
        tokenizer_path = folder / TOKENIZER_FILE
        if not tokenizer_path.is_file():
            raise TokenizerFormatError(f"{TOKENIZER_FILE} not found in model folder {folder}")
        try:
            backend = _Backend.from_file(str(tokenizer_path))
        except Exception as exc:  # the tokenizers library raises plain Exception
            raise TokenizerFormatError(f"{tokenizer_path}: cannot load tokenizer: {exc}") from exc
        config_path = folder / TOKENIZER_CONFIG_FILE
        raw = _read_json(config_path) if config_path.is_file() else {}
        settings = parse_tokenizer_config(raw, str(config_path))
        template_path = folder / CHAT_TEMPLATE_FILE
        if settings.chat_template is None and template_path.is_file():
            template = template_path.read_text(encoding="utf-8")
            settings = dataclasses.replace(settings, chat_template=template)
        return cls(backend, settings, _model_eos_ids(folder), source=str(folder))

    def _special_id(self, name: str) -> int | None:
        token = self.settings.special_tokens.get(name)
        if token is None:
            return None
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise TokenizerFormatError(
                f"{self.source}: {name} {token!r} is not in the vocabulary of {TOKENIZER_FILE}"
            )
        return int(token_id)

    def token_to_id(self, token: str) -> int | None:
        token_id = self.backend.token_to_id(token)
        return None if token_id is None else int(token_id)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        text = self._decode_raw(ids, skip_special_tokens)
        return clean_up_tokenization(text) if self._clean_up else text

    def _decode_raw(self, ids: Iterable[int], skip_special_tokens: bool) -> str:
        return str(self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        """Render the conversation with the folder's chat template. The result
        already holds any BOS the template writes: encode it with
        `add_special_tokens=False` (or use `encode_chat`)."""
        if self._template is None:
            raise ChatTemplateError(f"{self.source}: the tokenizer has no chat template")
        _check_messages(messages)
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                **self.settings.special_tokens,
                **extra,
            )
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat template: {exc}") from exc

    def encode_chat(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]:
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        return self.encode(text, add_special_tokens=False)

    def detokenizer(
        self, skip_special_tokens: bool = True, context_ids: Sequence[int] = ()
    ) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special_tokens, context_ids)


class IncrementalDetokenizer:
    """Turns a stream of token ids into a stream of text pieces.

    Decoding token by token is wrong twice over: a character may span several
    byte-level tokens, and some decoders drop a leading space only at the start
    of a text. So each step decodes a short window `ids[prefix:]` and returns
    what it adds to `ids[prefix:read]`; text ending in U+FFFD (an incomplete
    UTF-8 sequence, so far) is held back until a later token completes it.

    The concatenated pieces plus `flush()` equal `decode(all ids)`, with two
    exceptions that no stream can honour: the optional
    `clean_up_tokenization_spaces` pass (not local), and byte-fallback
    vocabularies given a run of byte tokens that is not valid UTF-8 (their
    decoder then turns every byte of the run into U+FFFD, retroactively).
    `context_ids` (e.g. the prompt's last tokens) set the left context of the
    first window and are not themselves emitted.
    """

    _CONTEXT = 5  # tokens of left context kept for the first window

    def __init__(
        self,
        tokenizer: Tokenizer,
        skip_special_tokens: bool = True,
        context_ids: Sequence[int] = (),
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = list(context_ids[-self._CONTEXT :])
        self._prefix = 0
        self._read = len(self._ids)

    def _window(self, start: int, stop: int | None = None) -> str:
        return self._tokenizer._decode_raw(self._ids[start:stop], self._skip)

    def add(self, token_ids: int | Sequence[int]) -> str:
        """Feed one token (or several); return the newly completed text (possibly empty)."""
        if isinstance(token_ids, int):
            self._ids.append(token_ids)
        else:
            self._ids.extend(token_ids)
        known = self._window(self._prefix, self._read)
        text = self._window(self._prefix)
        if len(text) <= len(known) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(known) :]

    def flush(self) -> str:
        """Text still held back (an unfinished character renders as U+FFFD)."""
        known = self._window(self._prefix, self._read)
        text = self._window(self._prefix)
        self._prefix = self._read = len(self._ids)
        return text[len(known) :]


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training
    masks in some templates; for serving it renders its body unchanged."""

    tags = {"generation"}  # noqa: RUF012  (jinja's Extension API wants a plain set)

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters, which chat prompts must not see.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _compile_template(source: str) -> jinja2.Template:
    # Chat templates come with downloaded models: untrusted code, hence the sandbox.
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return environment.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TokenizerFormatError(
            f"chat_template: syntax error on line {exc.lineno}: {exc}"
        ) from exc


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise ChatTemplateError("messages must be a list of {'role': ..., 'content': ...} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ChatTemplateError(f"messages[{i}] must be an object with a string 'role'")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TokenizerFormatError(f"{path}: cannot read JSON: {exc}") from exc


def _model_eos_ids(folder: Path) -> list[int]:
    """eos ids from config.json and generation_config.json (each int or list)."""
    ids: list[int] = []
    for name in ("config.json", "generation_config.json"):
        path = folder / name
        raw = _read_json(path) if path.is_file() else {}
        value = raw.get("eos_token_id") if isinstance(raw, dict) else None
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
                ids.append(item)
    return ids
