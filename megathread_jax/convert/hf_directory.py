"""GPT-2 as a Hugging Face model directory, both ways: what `GPT2LMHeadModel.from_pretrained(DIR)`
and `pipeline("text-generation", model=DIR)` open (config.json, model.safetensors,
generation_config.json and, when at hand, the tokenizer's files), and what they or the hub write."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from megathread_jax.errors import MissingDependencyError, WeightFileError, WeightsNotFoundError

CONFIG = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# The GPT2Config fields that our models.gpt2.GPT2Config shares with it (the same names).
_SHARED_FIELDS = (
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "activation_function",
    "layer_norm_epsilon",
    "bos_token_id",
    "eos_token_id",
)


def is_model_directory(path: str | pathlib.Path) -> bool:
    return (pathlib.Path(path) / CONFIG).is_file()


def tokenizer_in(directory: str | pathlib.Path) -> str | None:
    """The directory itself when it holds a tokenizer's files (what `AutoTokenizer` then loads from it)."""
    directory = pathlib.Path(directory).absolute()
    return str(directory) if any((directory / f).is_file() for f in TOKENIZER_FILES) else None


def read(directory: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state_dict, GPT-2 shape fields of its config.json) from a Hugging Face model directory:
    one weight file or shards listed by an index."""
    from megathread_jax.convert import read_weight_file

    directory = pathlib.Path(directory)
    try:
        config = json.loads((directory / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise WeightFileError(f"{directory / CONFIG} is not valid JSON ({e}); download or save it again") from None
    files = [directory / name for name in WEIGHT_FILES if (directory / name).is_file()]
    for index in SHARD_INDEXES:
        if (directory / index).is_file():
            shards = sorted(set(json.loads((directory / index).read_text())["weight_map"].values()))
            files = [directory / shard for shard in shards]
            break
    if not files:
        raise WeightsNotFoundError(f"{directory} has a {CONFIG} but no weights ({' or '.join(WEIGHT_FILES)})")
    state_dict: dict[str, Any] = {}
    for file in files:
        state_dict.update(read_weight_file(file))
    return state_dict, {k: config[k] for k in _SHARED_FIELDS if k in config}


def write(model, out: str | pathlib.Path, *, tokenizer_name: str | None) -> str:
    """Writes `model` (our GPT-2) as a Hugging Face directory; returns what was written, in words.
    The tokenizer's files are included when `tokenizer_name` is a Hugging Face tokenizer in the
    local cache (or reachable online)."""
    try:
        from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        raise MissingDependencyError(
            "writing a Hugging Face directory needs PyTorch and transformers: pip install 'megathread_jax[torch]'"
        ) from e
    from megathread_jax.convert import to_torch

    shape = {k: getattr(model.config, k) for k in _SHARED_FIELDS}
    reference = GPT2LMHeadModel(GPT2Config(**shape))
    # strict=False: the causal-mask buffers that some transformers versions keep are the model's own.
    reference.load_state_dict(to_torch("gpt2", model, target="hf"), strict=False)
    out = pathlib.Path(out)
    reference.save_pretrained(out, safe_serialization=True)
    tokenizer_note = "no tokenizer (the weights' vocabulary is byte-level, not a Hugging Face tokenizer's)"
    if tokenizer_name and tokenizer_name != "bytes":
        try:
            AutoTokenizer.from_pretrained(tokenizer_name).save_pretrained(out)
            tokenizer_note = f"the {tokenizer_name} tokenizer"
        except OSError:
            tokenizer_note = (
                f"no tokenizer: {tokenizer_name}'s files are not in the local Hugging Face cache (pass "
                f"tokenizer=AutoTokenizer.from_pretrained({tokenizer_name!r}) to pipeline, or run once online)"
            )
    return f"wrote a Hugging Face GPT-2 directory to {out}: config.json, model.safetensors, {tokenizer_note}"
