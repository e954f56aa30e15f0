"""Text corpora for language modelling, tokenised once and cached as uint16 token arrays.

Corpora: `pydoc` (the Python documentation topics that every Python install carries, in
`pydoc_data`; the built-in demo), `text_file` (a local UTF-8 file), `hf_dataset` (a Hugging Face
dataset by name, e.g. WikiText-2; needs a network once and `pip install datasets`). Tokenisers:
`bytes` (UTF-8 bytes plus an end-of-text token, 257 ids) or a Hugging Face tokenizer name (`gpt2`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import sys
from typing import Protocol

import numpy as np

from megathread_jax import hub
from megathread_jax.data import cache
from megathread_jax.errors import ConfigurationError, DataNotFoundError, UserError

CORPORA = ("pydoc", "text_file", "hf_dataset")


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eos_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; id 256 ends a text."""

    name = "bytes"
    vocab_size = 257
    eos_token_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HuggingFaceTokenizer:
    """A transformers tokenizer (the GPT-2 BPE for `gpt2`), downloaded once and cached by transformers."""

    def __init__(self, name: str):
        try:
            from transformers import AutoTokenizer
        except ImportError as e:
            raise UserError(f"the {name!r} tokenizer needs transformers: pip install transformers") from e
        try:
            self._tokenizer = hub.from_pretrained(AutoTokenizer.from_pretrained, name)
        except OSError as e:
            raise DataNotFoundError(
                f"could not load the Hugging Face tokenizer {name!r} ({str(e).splitlines()[0]}). "
                "Offline? Run once with a network (transformers caches it); models trained with the "
                "byte-level tokenizer (data.tokenizer=bytes) need no download"
            ) from None
        self.name = name
        self.vocab_size = len(self._tokenizer)
        self.eos_token_id = int(self._tokenizer.eos_token_id)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer(text, verbose=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(list(ids))


def get_tokenizer(name: str) -> Tokenizer:
    return ByteTokenizer() if name == "bytes" else HuggingFaceTokenizer(name)


@dataclasses.dataclass(frozen=True)
class TextDataset:
    name: str
    train_tokens: np.ndarray  # uint16 (N,)
    val_tokens: np.ndarray
    tokenizer: Tokenizer
    is_builtin_demo: bool = False


def _pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def _hf_dataset_text(data_config, split: str) -> str:
    try:
        import datasets
    except ImportError as e:
        raise UserError("Hugging Face data sets need the datasets package: pip install datasets") from e
    try:
        rows = datasets.load_dataset(data_config.hf_dataset, data_config.hf_config or None, split=split)
    except Exception as e:  # offline: hub and socket errors come in many types
        raise DataNotFoundError(
            f"could not load {data_config.hf_dataset} ({data_config.hf_config}) split {split!r} "
            f"({type(e).__name__}). Offline? Save the text to a file and use "
            "--config.data.name=text_file --config.data.path=FILE, or --config=configs/gpt2.py:demo"
        ) from None
    return "\n\n".join(rows["text"])


def _split_texts(data_config) -> tuple[str, str, str]:
    """(description, train text, validation text) of the configured corpus."""
    if data_config.name == "hf_dataset":
        description = f"{data_config.hf_dataset}/{data_config.hf_config}"
        train = _hf_dataset_text(data_config, data_config.train_split) if data_config.train_split else ""
        return description, train, _hf_dataset_text(data_config, data_config.val_split)
    if data_config.name == "pydoc":
        text, description = _pydoc_text(), f"pydoc_data topics (Python {sys.version.split()[0]})"
    elif data_config.name == "text_file":
        path = pathlib.Path(data_config.path).expanduser()
        if not path.is_file():
            raise DataNotFoundError(
                f"text file {path} does not exist; set --config.data.path=FILE (UTF-8 text), "
                "or use --config=configs/gpt2.py:demo for the built-in corpus"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path} is not UTF-8 text ({e})") from None
        description = str(path.absolute())
    else:
        raise ConfigurationError(f"unknown text corpus {data_config.name!r}; choose one of {', '.join(CORPORA)}")
    cut = int(len(text) * (1 - data_config.val_fraction))
    return description, text[:cut], text[cut:]


def _tokenise(text: str, tokenizer: Tokenizer) -> np.ndarray:
    """Token ids as uint16, ending with the end-of-text token."""
    if tokenizer.vocab_size > np.iinfo(np.uint16).max + 1:
        raise UserError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} ids; uint16 holds 65536")
    return np.asarray([*tokenizer.encode(text), tokenizer.eos_token_id], np.uint16)


def load(data_config) -> TextDataset:
    """The configured corpus, tokenised; cached in `data_config.cache_dir` by corpus, split and tokenizer."""
    description, train_text, val_text = _split_texts(data_config)
    tokenizer = get_tokenizer(data_config.tokenizer)
    key = hashlib.sha256(
        "\0".join(
            [
                description,
                tokenizer.name,
                str(len(train_text)),
                str(len(val_text)),
                hashlib.sha256((train_text + val_text).encode()).hexdigest(),
            ]
        ).encode()
    ).hexdigest()[:16]
    directory = pathlib.Path(data_config.cache_dir).expanduser() / key
    arrays = cache.load_arrays(directory, ("train_tokens", "val_tokens"))
    if arrays is None:
        arrays = {"train_tokens": _tokenise(train_text, tokenizer), "val_tokens": _tokenise(val_text, tokenizer)}
        cache.save_arrays(directory, arrays)
    if data_config.max_train_tokens:
        arrays["train_tokens"] = arrays["train_tokens"][: data_config.max_train_tokens]
    return TextDataset(
        f"{description} ({tokenizer.name} tokens)",
        arrays["train_tokens"],
        arrays["val_tokens"],
        tokenizer,
        is_builtin_demo=data_config.name == "pydoc",
    )


def train_window(tokens: np.ndarray, indices: np.ndarray, length: int) -> np.ndarray:
    """Packed training sequences: window i is tokens[i*length : i*length + length + 1] (inputs
    and their next-token targets), as int32 (len(indices), length + 1)."""
    starts = np.asarray(indices)[:, None] * length + np.arange(length + 1)
    return tokens[starts].astype(np.int32)


def num_train_windows(tokens: np.ndarray, length: int) -> int:
    return (len(tokens) - 1) // length


def sliding_windows(num_tokens: int, length: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first_target) of each evaluation window over `num_tokens` tokens: a window
    holds at most `length + 1` tokens (the model sees `length`), starts every `stride` tokens, and
    scores only the targets no earlier window scored. Every token but the first is scored once."""
    if not 1 <= stride <= length:
        raise UserError(f"evaluation stride must be in [1, {length}] (the window length), got {stride}")
    windows, scored_until, start = [], 1, 0
    while scored_until < num_tokens:
        end = min(start + length + 1, num_tokens)
        windows.append((start, end, scored_until))
        scored_until = end
        start += stride
    return windows


def eval_batches(tokens: np.ndarray, *, length: int, stride: int, batch_size: int):
    """Fixed-shape batches of sliding windows: "tokens" (B, length + 1) int32 and "mask" (B,
    length + 1), 1 where a token is a scored target. Missing windows in the last batch are all 0."""
    windows = sliding_windows(len(tokens), length, stride)
    for first in range(0, len(windows), batch_size):
        batch = np.zeros((batch_size, length + 1), np.int32)
        mask = np.zeros((batch_size, length + 1), np.int32)
        for row, (start, end, first_target) in enumerate(windows[first : first + batch_size]):
            batch[row, : end - start] = tokens[start:end]
            mask[row, first_target - start : end - start] = 1
        yield {"tokens": batch, "mask": mask}
