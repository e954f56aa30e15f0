"""What each config field means, which values it takes, and which ones a resumed run may change.

`check(config)` refuses a value that cannot train (a negative epoch count, a zero batch, a crop
scale outside (0, 1], ...) before anything is written, naming the field, the value and the valid
range. `describe(config)` is what `--print_config` shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import ml_collections

from megathread_jax.config_base import field_paths
from megathread_jax.errors import ConfigurationError

MEANINGS: dict[str, str] = {
    "variant": "the config file's variant this config was built from",
    "task": "what is learnt: image_classification | language_modelling",
    "seed": "seeds the initialisation, the batch order and the augmentation",
    "compilation_cache_dir": 'JAX\'s persistent compilation cache ("" = off)',
    "init_from": '"" = random init; timm | hf | torchvision[:TAG] = published weights; or a weights directory',
    "freeze": "parameter patterns frozen for the whole run (features.[0-13])",
    "unfreeze": "PATTERN@EPOCH,...: frozen until that epoch",
    "lr_multipliers": "PATTERN=MULT,...: learning rate scaled by MULT",
    "lora.rank": "rank of the LoRA adapters; only they train (0 = off: every parameter trains)",
    "lora.alpha": "LoRA scale numerator: an adapter adds alpha / rank * x @ a @ b",
    "lora.targets": 'projections given adapters, as path patterns ("" = every attention and MLP projection)',
    "num_epochs": "passes over the training set (0 = evaluate only)",
    "batch_size": "global training batch, split over every device",
    "grad_accum_steps": "microbatches per step, run in sequence with their gradients averaged (1 = off)",
    "eval_batch_size": "validation batch",
    "label_smoothing": "label smoothing of the cross-entropy targets",
    "ema_decay": "moving average of the weights, validated each epoch, kept if better (0 = off)",
    "skip_nonfinite_updates": "skip an update with a non-finite loss or gradient instead of stopping",
    "log_every_steps": "steps between metric lines",
    "checkpoint_every_steps": "steps between checkpoints besides each epoch end (0 = epoch ends only)",
    "keep_checkpoints": "latest checkpoints kept for resume",
    "sample_prompt": "prompt of the sample printed at the end of a run",
    "sample_tokens": "new tokens of that sample (0 = none)",
    "sample_top_k": "top-k of that sample (0 = all tokens)",
    "model.name": "the architecture (megathread_jax.models.names())",
    "model.dtype": "compute dtype: float32 | bfloat16 | float16 (loss-scaled; parameters stay float32)",
    "model.drop_rate": "dropout before the classifier",
    "model.conv_impl": "convolutions: auto | matmul (fast on a CPU) | lax (cuDNN on a GPU)",
    "model.width_mult": "MobileNetV2 channel width multiplier",
    "model.attention_impl": "attention kernel: xla | cudnn (GPU, bfloat16 or float16)",
    "model.remat": "recompute activations in the backward pass: none | full | dots",
    "model.embd_pdrop": "dropout on the embeddings",
    "model.resid_pdrop": "dropout on each residual branch",
    "model.attn_pdrop": "dropout on the attention weights",
    "model.n_layer": "transformer blocks",
    "model.n_head": "attention heads",
    "model.n_embd": "model width",
    "model.n_positions": "longest sequence the model takes",
    "data.name": "the data set: tiny_imagenet | cifar10 | image_folder | demo_shapes | synthetic | pydoc | text_file | "
    "hf_dataset",
    "data.data_dir": "where the data set is downloaded and its decoded cache kept",
    "data.download": "download the data set when it is missing",
    "data.resolution": "pixels per side the model sees",
    "data.crop": "training crop: random_resized | pad (pad-and-crop)",
    "data.crop_scale": "random_resized: (min, max) fraction of the image area kept",
    "data.crop_padding": "pad: pixels padded on each side before the crop",
    "data.normalisation": "per-channel mean/std: tiny_imagenet | imagenet | unit ([0, 1] inputs)",
    "data.image_size": "built-in data sets and image_folder: pixels per side of the stored images (0 = resolution)",
    "data.train_size": "built-in data sets: training examples",
    "data.val_size": "built-in data sets: validation examples",
    "data.num_classes": "synthetic data only: classes",
    "data.path": "text_file: a UTF-8 text file; image_folder: the folder of class folders",
    "data.hf_dataset": "hf_dataset: a Hugging Face dataset id",
    "data.hf_config": "hf_dataset: its configuration",
    "data.train_split": "hf_dataset: the training split",
    "data.val_split": "hf_dataset: the validation split",
    "data.val_fraction": "pydoc / text_file: fraction at the end of the text held out for validation; "
    "image_folder without train/ and val/: fraction of each class held out",
    "data.tokenizer": 'a Hugging Face tokenizer name, or "bytes"',
    "data.cache_dir": "where tokenised corpora are cached",
    "data.seq_len": "tokens per training window",
    "data.eval_stride": "validation window stride (0 = non-overlapping windows)",
    "data.max_train_tokens": "cap on the training tokens (0 = all)",
    "optim.name": "adamw | sgd",
    "optim.learning_rate": "peak learning rate, after the warmup",
    "optim.final_lr_fraction": "learning rate at the end of the cosine decay, as a fraction of the peak",
    "optim.warmup_epochs": "linear warmup from 0, in epochs",
    "optim.weight_decay": "AdamW's decoupled weight decay (kernels only)",
    "optim.b1": "AdamW's first-moment decay",
    "optim.b2": "AdamW's second-moment decay",
    "optim.momentum": "SGD momentum (0 = none)",
    "optim.grad_clip_norm": "clip gradients to this global norm (0 = off)",
    "parallel.fsdp": "devices each parameter and optimizer-state array is sharded over (1 = replicated)",
}

# Fields a rerun in the same workdir may change: they decide how often the run reports and saves,
# where it finds its data and compiled programs, and how it computes, never which updates it makes.
RESUMABLE_CHANGES = frozenset(
    {
        "log_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "eval_batch_size",
        "compilation_cache_dir",
        "skip_nonfinite_updates",
        "sample_prompt",
        "sample_tokens",
        "sample_top_k",
        "data.data_dir",
        "data.download",
        "data.cache_dir",
        "model.conv_impl",
        "model.remat",
        "model.attention_impl",
        "parallel.fsdp",
    }
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _number_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    def ok(v):
        return _is_number(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    return ok, f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _positive_number():
    return (lambda v: _is_number(v) and v > 0), "a number > 0"


def _non_negative_number():
    return (lambda v: _is_number(v) and v >= 0), "a number >= 0"


def _one_of(*choices: str):
    return (lambda v: v in choices), "one of " + ", ".join(choices)


def _crop_scale():
    def ok(v):
        return len(v) == 2 and all(_is_number(x) for x in v) and 0 < v[0] <= v[1] <= 1

    return ok, "two numbers (min, max) with 0 < min <= max <= 1"


RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": _int_at_least(0),
    "num_epochs": _int_at_least(0),
    "lora.rank": _int_at_least(0),
    "lora.alpha": _positive_number(),
    "batch_size": _int_at_least(1),
    "grad_accum_steps": _int_at_least(1),
    "eval_batch_size": _int_at_least(1),
    "label_smoothing": _number_in(0, 1, high_open=True),
    "ema_decay": _number_in(0, 1, high_open=True),
    "log_every_steps": _int_at_least(1),
    "checkpoint_every_steps": _int_at_least(0),
    "keep_checkpoints": _int_at_least(1),
    "sample_tokens": _int_at_least(0),
    "sample_top_k": _int_at_least(0),
    "model.drop_rate": _number_in(0, 1, high_open=True),
    "model.embd_pdrop": _number_in(0, 1, high_open=True),
    "model.resid_pdrop": _number_in(0, 1, high_open=True),
    "model.attn_pdrop": _number_in(0, 1, high_open=True),
    "model.width_mult": _positive_number(),
    "model.dtype": _one_of("float32", "bfloat16", "float16"),
    "model.conv_impl": _one_of("auto", "matmul", "lax"),
    "model.remat": _one_of("none", "full", "dots"),
    "model.attention_impl": _one_of("xla", "cudnn"),
    "data.resolution": _int_at_least(32),
    "data.crop": _one_of("random_resized", "pad"),
    "data.crop_scale": _crop_scale(),
    "data.crop_padding": _int_at_least(0),
    "data.normalisation": _one_of("tiny_imagenet", "imagenet", "unit"),
    "data.image_size": (lambda v: _is_int(v) and (v == 0 or v >= 8), "0 (the resolution) or an integer >= 8"),
    "data.train_size": _int_at_least(0),
    "data.val_size": _int_at_least(0),
    "data.num_classes": _int_at_least(2),
    "data.seq_len": _int_at_least(2),
    "data.eval_stride": _int_at_least(0),
    "data.val_fraction": _number_in(0, 1, low_open=True),
    "data.max_train_tokens": _int_at_least(0),
    "optim.name": _one_of("adamw", "sgd"),
    "optim.learning_rate": _positive_number(),
    "optim.final_lr_fraction": _number_in(0, 1),
    "optim.warmup_epochs": _non_negative_number(),
    "optim.weight_decay": _non_negative_number(),
    "optim.b1": _number_in(0, 1, high_open=True),
    "optim.b2": _number_in(0, 1, high_open=True),
    "optim.momentum": _number_in(0, 1, high_open=True),
    "optim.grad_clip_norm": _non_negative_number(),
    "parallel.fsdp": _int_at_least(1),
}


def value_of(config: ml_collections.ConfigDict, path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        node = node[part]
    return node


def _refuse(path: str, value: Any, valid: str) -> ConfigurationError:
    return ConfigurationError(f"config.{path}={value!r} is not valid: it must be {valid}")


def check(config: ml_collections.ConfigDict) -> None:
    """Refuses the first field whose value cannot be used, naming the field, the value and the range."""
    from megathread_jax import freezing

    present = set(field_paths(config))
    for path, (ok, valid) in RULES.items():
        if path in present and not ok(value_of(config, path)):
            raise _refuse(path, value_of(config, path), valid)
    if config.num_epochs and config.optim.warmup_epochs > config.num_epochs:
        raise _refuse("optim.warmup_epochs", config.optim.warmup_epochs, f"at most num_epochs ({config.num_epochs})")
    if config.batch_size % config.grad_accum_steps:
        raise _refuse("batch_size", config.batch_size, f"a multiple of grad_accum_steps ({config.grad_accum_steps})")
    if "data.seq_len" in present and config.data.eval_stride > config.data.seq_len:
        raise _refuse("data.eval_stride", config.data.eval_stride, f"at most data.seq_len ({config.data.seq_len})")
    freezing.FreezePlan.from_config(config)  # the patterns' syntax; what they match is checked on the model
    for pattern in freezing.split_items(config.lora.targets):
        freezing.compile_pattern(pattern)


def describe(config: ml_collections.ConfigDict) -> str:
    """Every field with its value and meaning, one line each (what --print_config prints)."""
    rows = [(f"config.{path}={value_of(config, path)!r}", MEANINGS.get(path, "")) for path in field_paths(config)]
    width = max(len(left) for left, _ in rows)
    return "\n".join(f"{left:<{width}}  # {meaning}" if meaning else left for left, meaning in rows)
