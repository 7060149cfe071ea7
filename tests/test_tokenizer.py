from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem.tokenizer import (
    ChatTemplateError,
    Tokenizer,
    TokenizerFormatError,
    clean_up_tokenization,
    parse_tokenizer_config,
)
from tests.factories import make_tiny_model

# No test may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"

TEXTS = [
    "Hello world",
    "The river ran low that summer.",
    "  leading spaces,\ttabs\n\nand newlines  ",
    "café naïve Zürich — “quotes” …",
    "こんにちは、世界。 你好 안녕하세요 Привет",
    "emoji 🙂🚀👍🏽 and ❤️",
    "def f(x: int) -> int:\n    return x * 2  # double\n",
    "<|im_start|>user\nhi<|im_end|>",
    "it's don't I'm they're we've , . ! ?",
    "",
    "unknown bytes \x00\x07 and \u200b zero width",
]

CHATS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Wie geht's? 🙂"},
        {"role": "assistant", "content": "  Gut, danke.  "},
        {"role": "user", "content": "日本語で"},
    ],
]


@pytest.fixture(scope="module", params=["llama", "mistral", "qwen2", "qwen3"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """llama's and mistral's tokenizers add a BOS token, the qwen ones do not;
    transformers rebuilds the qwen ones from the vocabulary (its own pipeline)."""
    return make_tiny_model(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def pair(model_dir: Path) -> tuple[Tokenizer, Any]:
    from transformers import AutoTokenizer

    return Tokenizer.from_dir(model_dir), AutoTokenizer.from_pretrained(model_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_transformers(pair: tuple[Tokenizer, Any], text: str) -> None:
    ours, hf = pair
    for special in (True, False):
        ids = ours.encode(text, add_special_tokens=special)
        assert ids == hf.encode(text, add_special_tokens=special)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(
                ids, skip_special_tokens=skip
            )
    # Byte-level BPE loses nothing.
    assert ours.decode(ours.encode(text)) == text.replace("<|im_start|>", "").replace(
        "<|im_end|>", ""
    )


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_template_matches_transformers(
    pair: tuple[Tokenizer, Any], chat: list[dict[str, Any]], generation_prompt: bool
) -> None:
    ours, hf = pair
    text = ours.apply_chat_template(chat, add_generation_prompt=generation_prompt)
    assert text == hf.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=generation_prompt
    )
    expected_ids = hf.apply_chat_template(
        chat, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
    )
    assert ours.encode_chat(chat, add_generation_prompt=generation_prompt) == list(expected_ids)
    assert text.endswith("<|im_start|>assistant\n") == generation_prompt


def test_special_ids(pair: tuple[Tokenizer, Any]) -> None:
    ours, hf = pair
    assert ours.bos_token_id == hf.bos_token_id
    assert hf.eos_token_id in ours.eos_token_ids
    # generation_config.json adds the end-of-turn token, so chat replies stop.
    assert ours.token_to_id("<|im_end|>") in ours.eos_token_ids
    assert ours.vocab_size == len(hf)
    assert 1000 <= ours.vocab_size <= 2000


def test_unsupported_role_raises_named_error(pair: tuple[Tokenizer, Any]) -> None:
    ours, _ = pair
    with pytest.raises(ChatTemplateError, match="Unsupported chat role 'tool'"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(ChatTemplateError, match=r"messages\[0\] must be an object"):
        ours.apply_chat_template([{"content": "no role"}])


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_incremental_detokenizer_reproduces_full_decode(
    pair: tuple[Tokenizer, Any], data: st.DataObject
) -> None:
    ours, _ = pair
    # Random ids over the whole vocabulary produce split and invalid UTF-8
    # sequences as well as special tokens; text-derived ids produce real words.
    text = data.draw(st.text(max_size=20))
    ids = data.draw(
        st.one_of(
            st.lists(st.integers(0, ours.vocab_size - 1), max_size=40),
            st.just(ours.encode(text, add_special_tokens=False)),
        )
    )
    skip = data.draw(st.booleans())
    detok = ours.detokenizer(skip_special_tokens=skip)
    pieces = [detok.add(i) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == ours.decode(ids, skip_special_tokens=skip)


def test_incremental_detokenizer_holds_back_split_characters(pair: tuple[Tokenizer, Any]) -> None:
    ours, _ = pair
    # One byte token per UTF-8 byte of "é🙂": nothing comes out until a character completes.
    byte_ids = [ours.token_to_id(_byte_token(b)) for b in "é🙂".encode()]
    detok = ours.detokenizer()
    pieces = [detok.add(i) for i in byte_ids if i is not None]
    assert pieces == ["", "é", "", "", "", "🙂"]
    assert detok.flush() == ""


def test_incremental_detokenizer_accepts_batches_and_context(pair: tuple[Tokenizer, Any]) -> None:
    ours, _ = pair
    prompt = ours.encode("The river ran")
    reply = ours.encode(" low that summer.", add_special_tokens=False)
    detok = ours.detokenizer(context_ids=prompt)
    assert detok.add(reply[:2]) + detok.add(reply[2:]) + detok.flush() == " low that summer."


def sentencepiece_like() -> Tokenizer:
    """A Llama-2/Mistral-style vocabulary: '▁' marks spaces, bytes fall back to
    <0xNN> tokens, and the decoder drops the leading space of a text."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, normalizers

    from tandem.tokenizer import TokenizerSettings

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in [
        "▁",
        "▁the",
        "▁a",
        "▁hello",
        "hello",
        "▁world",
        "s",
        "t",
        ",",
        ".",
        "▁café",
        "é",
        "🙂",
    ]:
        vocab[piece] = len(vocab)
    backend = Backend(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    backend.add_special_tokens(["<s>", "</s>"])
    return Tokenizer(
        backend, TokenizerSettings({"bos_token": "<s>", "eos_token": "</s>"}, None, False)
    )


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(
        st.one_of(st.text(max_size=8), st.sampled_from([1, 2, 259, 260, 261, 262, 270])), max_size=8
    ),
    skip=st.booleans(),
)
def test_incremental_detokenizer_on_sentencepiece_style_decoder(
    chunks: list[str | int], skip: bool
) -> None:
    # Byte-fallback decoders turn a whole run of byte tokens into U+FFFD per
    # byte when the run is not valid UTF-8, retroactively; streams of valid
    # text (as models emit) must match exactly, so runs come from real text.
    tok = _SENTENCEPIECE
    ids: list[int] = []
    for chunk in chunks:
        ids += tok.encode(chunk, add_special_tokens=False) if isinstance(chunk, str) else [chunk]
    detok = tok.detokenizer(skip_special_tokens=skip)
    pieces = [detok.add(i) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip)


def test_sentencepiece_style_leading_space_and_context() -> None:
    tok = _SENTENCEPIECE
    hello, world = tok.token_to_id("▁hello"), tok.token_to_id("▁world")
    assert hello is not None and world is not None
    detok = tok.detokenizer()
    assert [detok.add(hello), detok.add(world)] == ["hello", " world"]
    # After a prompt, the first reply token keeps its space.
    after_prompt = tok.detokenizer(context_ids=[1, hello])
    assert after_prompt.add(world) == " world"


_SENTENCEPIECE = sentencepiece_like()


def _byte_token(byte: int) -> str:
    """The byte-level alphabet's printable stand-in for one byte (GPT-2 scheme)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    if byte in printable:
        return chr(byte)
    return chr(256 + [b for b in range(256) if b not in printable].index(byte))


# ---- folder and config errors ----


def test_missing_tokenizer_json_names_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(
        TokenizerFormatError,
        match=re.escape(f"tokenizer.json not found in model folder {tmp_path}"),
    ):
        Tokenizer.from_dir(tmp_path)


def test_corrupt_tokenizer_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": 3}')
    with pytest.raises(
        TokenizerFormatError,
        match=re.escape(f"{tmp_path / 'tokenizer.json'}: cannot load tokenizer"),
    ):
        Tokenizer.from_dir(tmp_path)


def copy_model(model_dir: Path, dest: Path, **config_changes: Any) -> Path:
    shutil.copytree(model_dir, dest)
    path = dest / "tokenizer_config.json"
    raw = json.loads(path.read_text())
    raw.update(config_changes)
    path.write_text(json.dumps(raw))
    return dest


def test_eos_token_not_in_vocabulary(model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(model_dir, tmp_path / "m", eos_token="<|nope|>")
    with pytest.raises(
        TokenizerFormatError, match=re.escape("eos_token '<|nope|>' is not in the vocabulary")
    ):
        Tokenizer.from_dir(folder)


def test_chat_template_from_separate_file(model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(model_dir, tmp_path / "m", chat_template=None)
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        Tokenizer.from_dir(folder).apply_chat_template(CHATS[0])
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{% generation %}[{{ m['role'] }}]{% endgeneration %}{{ m['content'] | tojson }}{% endfor %}"
    )
    assert Tokenizer.from_dir(folder).apply_chat_template(CHATS[0]) == '[user]"Hello!"'


def test_template_syntax_error(model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(model_dir, tmp_path / "m", chat_template="{% for m in messages %}")
    with pytest.raises(TokenizerFormatError, match="chat_template: syntax error"):
        Tokenizer.from_dir(folder)


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        (
            {
                "bos_token": {"content": "<s>", "lstrip": False},
                "eos_token": "</s>",
                "pad_token": None,
            },
            ({"bos_token": "<s>", "eos_token": "</s>"}, None, False),
        ),
        (
            {
                "chat_template": [
                    {"name": "tool_use", "template": "T"},
                    {"name": "default", "template": "D"},
                ],
                "clean_up_tokenization_spaces": True,
            },
            ({}, "D", True),
        ),
    ],
)
def test_parse_tokenizer_config(
    raw: dict[str, Any], expect: tuple[dict[str, str], str | None, bool]
) -> None:
    settings = parse_tokenizer_config(raw, "tokenizer_config.json")
    assert (
        settings.special_tokens,
        settings.chat_template,
        settings.clean_up_tokenization_spaces,
    ) == expect


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "tokenizer_config.json: expected a JSON object"),
        ({"eos_token": 2}, "tokenizer_config.json: field 'eos_token' must be a string, got 2"),
        ({"chat_template": 5}, "field 'chat_template' must be a string or a list"),
        (
            {"chat_template": [{"name": "rag", "template": "x"}]},
            "field 'chat_template' has no 'default' template",
        ),
        (
            {"clean_up_tokenization_spaces": "yes"},
            "field 'clean_up_tokenization_spaces' must be true or false",
        ),
    ],
)
def test_parse_tokenizer_config_errors(raw: Any, message: str) -> None:
    with pytest.raises(TokenizerFormatError, match=re.escape(message)):
        parse_tokenizer_config(raw, "tokenizer_config.json")


@pytest.mark.parametrize("force", [False, True])
def test_clean_up_tokenization_matches_transformers(
    model_dir: Path, tmp_path: Path, force: bool
) -> None:
    from transformers import AutoTokenizer

    changes = {"clean_up_tokenization_spaces": True}
    if force:
        changes["clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"] = True
    folder = copy_model(model_dir, tmp_path / "m", **changes)
    ours, hf = Tokenizer.from_dir(folder), AutoTokenizer.from_pretrained(folder)
    text = "Hello , world . It 's fine , is n't it ? Yes !"
    ids = ours.encode(text)
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    # transformers applies the clean-up to BPE vocabularies only when forced.
    expected = "Hello, world. It's fine, isn't it? Yes!" if force else text
    assert ours.decode(ids) == expected == (clean_up_tokenization(text) if force else text)


def test_no_torch_import() -> None:
    import subprocess
    import sys

    code = "import sys, tandem.tokenizer; sys.exit(1 if 'torch' in sys.modules or 'transformers' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
