"""MobileViT-XXS on Tiny ImageNet, the series' four runs, plus a demo on built-in data.

Variants (`--config=configs/mobilevit.py:VARIANT`):
  scratch_64, scratch_96        random initialisation, at 64 or 96 px
  pretrained_64, pretrained_96  timm's ImageNet weights, a fresh 200-class head (default: pretrained_96)
  demo                          built-in procedural shapes, a few minutes on a CPU
"""

import ml_collections

VARIANTS = ("scratch_64", "scratch_96", "pretrained_64", "pretrained_96", "demo")


def get_config(variant: str = "pretrained_96") -> ml_collections.ConfigDict:
    variant = variant or "pretrained_96"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of configs/mobilevit.py; choose one of {', '.join(VARIANTS)}")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "mobilevit_xxs"
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    c.model.drop_rate = 0.0
    c.model.depthwise_impl = "auto"  # auto: shifted multiply-adds on CPU, lax grouped conv on GPU
    # "" = random init; "timm" / "hf" = published ImageNet weights (converted once, cached);
    # or a directory written by `python -m megathread_jax.convert`.
    c.init_from = ""

    c.data = ml_collections.ConfigDict()
    c.data.name = "tiny_imagenet"
    c.data.data_dir = "~/.cache/megathread_jax/tiny_imagenet"
    c.data.download = True
    c.data.resolution = 64
    c.data.crop = "random_resized"  # or "pad": pad-and-crop
    c.data.crop_scale = (0.35, 1.0)  # random-resized-crop area fraction (64 px source images)
    c.data.crop_padding = 4  # pad-and-crop only
    c.data.normalisation = "tiny_imagenet"
    # used by the built-in demo data only
    c.data.image_size = 32
    c.data.train_size = 0
    c.data.val_size = 0

    # Which parameters train (see megathread_jax/freezing.py): path patterns like "stages.[0-2]".
    c.freeze = ""
    c.unfreeze = ""
    c.lr_multipliers = ""

    c.num_epochs = 30
    c.batch_size = 64
    c.eval_batch_size = 250
    c.label_smoothing = 0.1

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"
    c.optim.learning_rate = 2e-3
    c.optim.final_lr_fraction = 0.01
    c.optim.warmup_epochs = 1.0
    c.optim.weight_decay = 0.05
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.momentum = 0.0  # sgd only
    c.optim.grad_clip_norm = 1.0

    c.log_every_steps = 100
    c.checkpoint_every_steps = 1000  # besides every epoch end
    c.keep_checkpoints = 2

    kind, _, size = variant.partition("_")
    if kind in ("scratch", "pretrained"):
        c.data.resolution = int(size)
    if kind == "pretrained":
        c.init_from = "timm"
        c.data.normalisation = "unit"  # timm's MobileViT weights were trained on [0, 1] inputs
        c.optim.learning_rate = 5e-4
        c.optim.weight_decay = 0.01
    if kind == "demo":
        c.data.name = "demo_shapes"
        c.data.image_size = 32
        c.data.resolution = 32
        c.data.crop_scale = (0.6, 1.0)
        c.data.train_size = 4000
        c.data.val_size = 1000
        c.num_epochs = 12
        c.optim.learning_rate = 4e-3
        c.eval_batch_size = 200
        c.log_every_steps = 20
        c.checkpoint_every_steps = 0
    return c
