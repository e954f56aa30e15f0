"""Hugging Face model directories, both ways: what `from_pretrained(DIR)` and `pipeline(task,
model=DIR)` open, and what they or the hub write. GPT-2: config.json, model.safetensors,
generation_config.json and, when at hand, the tokenizer's files (`GPT2LMHeadModel`, text-generation).
MobileViT: the same with the class names as labels and an image processor config
(`MobileViTForImageClassification`, image-classification)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from megathread_jax.convert import mobilevit
from megathread_jax.errors import ConfigurationError, MissingDependencyError, WeightFileError, WeightsNotFoundError
from megathread_jax.models import gpt2

CONFIG = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# MobileViTConfig's fields for each size (mobilevit_s is its default).
MOBILEVIT_CONFIGS: dict[str, dict[str, Any]] = {
    "mobilevit_xxs": {
        "neck_hidden_sizes": [16, 16, 24, 48, 64, 80, 320],
        "hidden_sizes": [64, 80, 96],
        "expand_ratio": 2.0,
    },
    "mobilevit_xs": {"neck_hidden_sizes": [16, 32, 48, 64, 80, 96, 384], "hidden_sizes": [96, 120, 144]},
    "mobilevit_s": {},
}
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


def read(directory: str | pathlib.Path, model_name: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(state_dict, model kwargs, weights metadata) from a Hugging Face model directory (one weight
    file, or shards listed by an index): GPT-2's shape fields and tokenizer, MobileViT's class names."""
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
    if model_name in gpt2.SIZES:
        tokenizer = tokenizer_in(directory)
        kwargs = {k: config[k] for k in _SHARED_FIELDS if k in config}
        return state_dict, kwargs, ({"tokenizer": tokenizer} if tokenizer else {})
    labels = config.get("id2label", {})
    names = [labels[str(i)] for i in range(len(labels))] if len(labels) > 1 else []
    return state_dict, {}, ({"class_names": names} if names else {})


def write(model, model_name: str, meta: dict[str, Any], out: str | pathlib.Path) -> str:
    """Writes `model` as a Hugging Face directory; returns what was written, in words."""
    try:
        import transformers
    except ImportError as e:
        raise MissingDependencyError(
            "writing a Hugging Face directory needs PyTorch and transformers: pip install 'megathread_jax[torch]'"
        ) from e
    out = pathlib.Path(out)
    if model_name in gpt2.SIZES:
        return _write_gpt2(transformers, model, out, tokenizer_name=meta.get("tokenizer", "gpt2"))
    if model_name in MOBILEVIT_CONFIGS:
        return _write_mobilevit(transformers, model, model_name, meta, out)
    raise ConfigurationError(
        f"no Hugging Face model for {model_name}; write a state_dict file instead (--out FILE.safetensors)"
    )


def _write_gpt2(transformers, model, out: pathlib.Path, *, tokenizer_name: str | None) -> str:
    """The tokenizer's files are included when `tokenizer_name` is a Hugging Face tokenizer in the
    local cache (or reachable online)."""
    from megathread_jax.convert import to_torch

    shape = {k: getattr(model.config, k) for k in _SHARED_FIELDS}
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape))
    # strict=False: the causal-mask buffers that some transformers versions keep are the model's own.
    reference.load_state_dict(to_torch("gpt2", model, target="hf"), strict=False)
    reference.save_pretrained(out, safe_serialization=True)
    tokenizer_note = "no tokenizer (the weights' vocabulary is byte-level, not a Hugging Face tokenizer's)"
    if tokenizer_name and tokenizer_name != "bytes":
        try:
            transformers.AutoTokenizer.from_pretrained(tokenizer_name).save_pretrained(out)
            tokenizer_note = f"the {tokenizer_name} tokenizer"
        except OSError:
            tokenizer_note = (
                f"no tokenizer: {tokenizer_name}'s files are not in the local Hugging Face cache (pass "
                f"tokenizer=AutoTokenizer.from_pretrained({tokenizer_name!r}) to pipeline, or run once online)"
            )
    return f"wrote a Hugging Face GPT-2 directory to {out}: config.json, model.safetensors, {tokenizer_note}"


def _write_mobilevit(transformers, model, model_name: str, meta: dict[str, Any], out: pathlib.Path) -> str:
    """The labels are the weights' class names; the image processor resizes, centre-crops and
    normalises as the weights were trained (RGB: the channel flip of Apple's own weights is off)."""
    import torch

    from megathread_jax.convert.tree import export_state_dict

    num_classes = model.shape_kwargs()["num_classes"]
    names = meta.get("class_names") or [f"class_{i}" for i in range(num_classes)]
    config = transformers.MobileViTConfig(
        **MOBILEVIT_CONFIGS[model_name],
        num_labels=num_classes,
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )
    reference = transformers.MobileViTForImageClassification(config)
    arrays = mobilevit.timm_to_hf(export_state_dict(model), reference.state_dict())
    # strict=False: PyTorch fills in num_batches_tracked, which carries no weights.
    reference.load_state_dict({k: torch.tensor(v) for k, v in arrays.items()}, strict=False)
    reference.save_pretrained(out, safe_serialization=True)
    prep = meta.get("preprocess", mobilevit.IMAGENET_PREPROCESS)
    resolution = prep["resolution"]
    transformers.BitImageProcessor(
        size={"shortest_edge": resolution},
        crop_size={"height": resolution, "width": resolution},
        image_mean=list(prep["mean"]),
        image_std=list(prep["std"]),
    ).save_pretrained(out)
    return (
        f"wrote a Hugging Face {model_name} directory to {out}: config.json ({num_classes} labels), "
        f"model.safetensors, preprocessor_config.json ({resolution} px)"
    )
