"""The fields every training config has, with their defaults. Each `configs/*.py` starts from
`base_config` and overrides what its model and variants need."""

from __future__ import annotations

import difflib
import importlib.util
import pathlib
import types
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections

from megathread_jax.errors import ConfigurationError


def pick_variant(variant: str, variants: Mapping[str, str], default: str, config_file: str) -> str:
    """`variant` (the part after `:` in --config=FILE:VARIANT), `default` when empty; unknown ones
    refused with the list. `variants` maps each name to its one-line description."""
    variant = variant or default
    if variant not in variants:
        raise ConfigurationError(
            f"unknown variant {variant!r} of {config_file}; choose one of {', '.join(variants)} "
            f"(--config={config_file}:list describes them)"
        )
    return variant


def base_config(variant: str, model: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.task = "image_classification"  # megathread_jax.tasks.TASKS
    c.seed = 0
    # Compiled programs are kept here across runs (JAX's persistent compilation cache); "" = off.
    c.compilation_cache_dir = "~/.cache/megathread_jax/xla"

    c.model = ml_collections.ConfigDict()
    c.model.name = model
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 | float16 (loss-scaled; parameters stay float32)
    c.model.drop_rate = 0.0
    c.model.conv_impl = "auto"  # auto: "matmul" on CPU (convs as matrix products), "lax" on GPU (cuDNN)
    # "" = random init; a weight source ("timm", "hf", "torchvision", optionally ":TAG") for the
    # published ImageNet weights (converted once, cached); or a directory written by
    # `python -m megathread_jax.convert`.
    c.init_from = ""

    # Which parameters train (megathread_jax/freezing.py): path patterns like "features.[0-13]".
    c.freeze = ""  # frozen for the whole run
    c.unfreeze = ""  # "PATTERN@EPOCH,...": frozen until EPOCH
    c.lr_multipliers = ""  # "PATTERN=MULT,..."
    # LoRA (megathread_jax/lora.py, GPT-2): low-rank adapters train, every base weight stays frozen.
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0  # 0 = off
    c.lora.alpha = 16.0  # an adapter's output is scaled by alpha / rank
    c.lora.targets = ""  # projection path patterns ("transformer.h.[0-5].attn"); "" = all of them

    c.data = ml_collections.ConfigDict()
    c.data.name = ""
    c.data.data_dir = ""
    c.data.download = True
    c.data.resolution = 64
    c.data.crop = "random_resized"  # or "pad": pad-and-crop
    c.data.crop_scale = (0.35, 1.0)  # random_resized: area fraction
    c.data.crop_padding = 4  # pad: pixels on each side
    c.data.normalisation = "imagenet"  # megathread_jax.data.NORMALISATIONS
    # image_folder: your own images, DIR/train/<class>/* and DIR/val/<class>/*, or DIR/<class>/*
    # with val_fraction of each class held out for validation
    c.data.path = ""
    c.data.val_fraction = 0.1
    # Pixels per side of the images held in memory (0 = data.resolution): the built-in sets and
    # image_folder; Tiny ImageNet and CIFAR-10 keep their native 64 and 32.
    c.data.image_size = 32
    c.data.train_size = 0
    c.data.val_size = 0
    c.data.num_classes = 10  # synthetic only

    c.num_epochs = 30
    c.batch_size = 64  # examples per optimizer step, whatever grad_accum_steps is
    # Splits each step's batch into this many microbatches run in sequence (gradients averaged):
    # the batch of a bigger GPU in the memory of a smaller one.
    c.grad_accum_steps = 1
    c.eval_batch_size = 250
    c.label_smoothing = 0.1
    # An exponential moving average of the weights, validated beside them each epoch; the final
    # weights are the average when it validates better (0 = off; 0.999 is common).
    c.ema_decay = 0.0

    c.parallel = ml_collections.ConfigDict()
    # Devices each parameter and optimizer-state array is split over (the `fsdp` mesh axis); the
    # other devices form the data-parallel axis. 1 = the state replicated on every device.
    c.parallel.fsdp = 1

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # or "sgd"
    c.optim.learning_rate = 1e-3
    c.optim.final_lr_fraction = 0.01
    c.optim.warmup_epochs = 1.0
    c.optim.weight_decay = 0.05
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.momentum = 0.0  # sgd only
    c.optim.grad_clip_norm = 1.0

    # A non-finite loss, gradient or update stops the run (naming the step) unless this is True:
    # then that update is skipped and counted in the `skipped_updates` metric.
    c.skip_nonfinite_updates = False

    c.log_every_steps = 100
    c.checkpoint_every_steps = 1000  # besides every epoch end
    c.keep_checkpoints = 2
    return c


def use_demo_data(c: ml_collections.ConfigDict, *, resolution: int) -> None:
    """Built-in procedural shapes: 4,000 train / 1,000 val 32 px images, random init."""
    c.init_from = ""
    c.data.name = "demo_shapes"
    c.data.image_size = 32
    c.data.resolution = resolution
    c.data.train_size = 4000
    c.data.val_size = 1000
    c.batch_size = 64
    c.eval_batch_size = 200
    c.log_every_steps = 20
    c.checkpoint_every_steps = 0


def config_module(path: str | pathlib.Path) -> types.ModuleType:
    """The config file at `path`, loaded as a module (its `get_config`, `VARIANTS`, `DEFAULT_VARIANT`)."""
    path = pathlib.Path(path)
    module_spec = importlib.util.spec_from_file_location(path.stem + "_config", path)
    if module_spec is None or not path.is_file():
        raise ConfigurationError(f"config file {path} does not exist (the configs are in the repository's configs/)")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def field_paths(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
    """Every leaf field of `config` as a dotted path (`optim.learning_rate`)."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from field_paths(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def check_field(config: ml_collections.ConfigDict, path: str) -> None:
    """Refuses a dotted path that is not a field of `config`, naming the closest one."""
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            break
        node = node[part]
    else:
        return
    known = list(field_paths(config))
    close = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
    hint = f"; did you mean config.{close[0]}?" if close else "; --print_config lists the fields"
    raise ConfigurationError(f"unknown config field config.{path} in variant {config.variant!r}{hint}")


def load_config(spec: str | pathlib.Path, overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
    """The config of `FILE.py[:VARIANT]` (as `--config=` takes it), with dotted-key overrides
    (as `--config.a.b=...` gives them); an unknown field is refused like on the command line."""
    path, _, variant = str(spec).partition(":")
    module = config_module(path)
    config = module.get_config(variant) if variant else module.get_config()
    for key, value in (overrides or {}).items():
        check_field(config, key)
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config
