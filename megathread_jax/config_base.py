"""The fields every training config has, with their defaults. Each `configs/*.py` starts from
`base_config` and overrides what its model and variants need."""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import ml_collections


def pick_variant(variant: str, variants: tuple[str, ...], default: str, config_file: str) -> str:
    """`variant` (the part after `:` in --config=FILE:VARIANT), `default` when empty; unknown ones refused."""
    variant = variant or default
    if variant not in variants:
        raise ValueError(f"unknown variant {variant!r} of {config_file}; choose one of {', '.join(variants)}")
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
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
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

    c.data = ml_collections.ConfigDict()
    c.data.name = ""
    c.data.data_dir = ""
    c.data.download = True
    c.data.resolution = 64
    c.data.crop = "random_resized"  # or "pad": pad-and-crop
    c.data.crop_scale = (0.35, 1.0)  # random_resized: area fraction
    c.data.crop_padding = 4  # pad: pixels on each side
    c.data.normalisation = "imagenet"  # megathread_jax.data.NORMALISATIONS
    # the built-in data sets only (demo_shapes, synthetic)
    c.data.image_size = 32
    c.data.train_size = 0
    c.data.val_size = 0
    c.data.num_classes = 10  # synthetic only

    c.num_epochs = 30
    c.batch_size = 64
    c.eval_batch_size = 250
    c.label_smoothing = 0.1

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


def load_config(spec: str | pathlib.Path, overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
    """The config of `FILE.py[:VARIANT]` (as `--config=` takes it), with dotted-key overrides
    (as `--config.a.b=...` gives them); an unknown field is refused like on the command line."""
    path, _, variant = str(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem + "_config", path)
    if module_spec is None or not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(variant) if variant else module.get_config()
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part] if part in node else None
            if not isinstance(node, ml_collections.ConfigDict):
                raise KeyError(f"unknown config field {key!r}")
        if leaf not in node:
            raise KeyError(f"unknown config field {key!r}")
        node[leaf] = value
    return config
