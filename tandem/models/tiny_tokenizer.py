"""The tokenizer of the tiny models: byte-level BPE trained on the shipped
corpus (`data/corpus.txt`), with ChatML-style role markers and chat template
(`data/chat_template.jinja`).

Each family gets the text pipeline its published tokenizers use, because
`transformers` rebuilds some tokenizers from the vocabulary by model type
rather than reading `tokenizer.json` whole: for `qwen2`/`qwen3` it applies
Qwen's own normalizer and split pattern, so a tiny Qwen must have exactly
those to tokenize identically. Training is deterministic: the same corpus
gives the same `tokenizer.json`.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Ids follow list order: bos 0, eos 1, pad 2, im_start 3, im_end 4.
SPECIAL_TOKENS = (BOS, EOS, PAD, IM_START, IM_END)
VOCAB_TARGET = 1536  # the corpus supports ~1.3k tokens at min_frequency 2

# Qwen2's pre-tokenization pattern, as its tokenizer.json and transformers'
# Qwen2Tokenizer define it (byte-identical, or the vocabularies disagree).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def adds_bos(arch: str) -> bool:
    # Like Qwen's, the qwen variants' tokenizers add no BOS; llama and mistral do.
    return arch in ("llama", "mistral")


def data_text(name: str) -> str:
    return resources.files("tandem.models").joinpath("data", name).read_text(encoding="utf-8")


def tokenizer_config(arch: str, max_length: int) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS if adds_bos(arch) else None,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": data_text("chat_template.jinja"),
    }


def train_tokenizer(arch: str) -> Any:
    """A trained `tokenizers.Tokenizer` for the architecture's family."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    if arch in ("qwen2", "qwen3"):
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(data_text("corpus.txt").splitlines(keepends=True), trainer)
    tokenizer.post_processor = _post_processor(adds_bos(arch))
    return tokenizer


def _post_processor(add_bos: bool) -> Any:
    from tokenizers import processors

    steps: list[Any] = [processors.ByteLevel(trim_offsets=False)]
    if add_bos:
        steps.append(
            processors.TemplateProcessing(
                single=f"{BOS} $A",
                pair=f"{BOS} $A {BOS} $B",
                special_tokens=[(BOS, SPECIAL_TOKENS.index(BOS))],
            )
        )
    return processors.Sequence(steps)
