"""MobileViT-XXS on Tiny ImageNet, the series' four runs, plus a demo on built-in data.

Variants: `--config=configs/mobilevit.py:VARIANT`; `:list` describes them.
"""

import ml_collections

from megathread_jax.config_base import base_config, pick_variant, use_demo_data

VARIANTS = {
    "scratch_64": "random initialisation, 64 px Tiny ImageNet, 30 epochs",
    "scratch_96": "random initialisation, Tiny ImageNet resized to 96 px, 30 epochs",
    "pretrained_64": "timm's ImageNet weights, a fresh 200-class head, 64 px, 30 epochs",
    "pretrained_96": "timm's ImageNet weights, a fresh 200-class head, 96 px, 30 epochs",
    "demo": "built-in procedural shapes (no download), 10 classes, 32 px, about 3 minutes on a CPU",
}
DEFAULT_VARIANT = "pretrained_96"


def get_config(variant: str = DEFAULT_VARIANT) -> ml_collections.ConfigDict:
    variant = pick_variant(variant, VARIANTS, DEFAULT_VARIANT, "configs/mobilevit.py")
    c = base_config(variant, "mobilevit_xxs")
    c.data.name = "tiny_imagenet"
    c.data.data_dir = "~/.cache/megathread_jax/tiny_imagenet"
    c.data.crop_scale = (0.35, 1.0)  # of the 64 px source images
    c.data.normalisation = "tiny_imagenet"
    c.optim.learning_rate = 2e-3

    kind, _, size = variant.partition("_")
    if kind in ("scratch", "pretrained"):
        c.data.resolution = int(size)
    if kind == "pretrained":
        c.init_from = "timm"
        c.data.normalisation = "unit"  # timm's MobileViT weights were trained on [0, 1] inputs
        c.optim.learning_rate = 5e-4
        c.optim.weight_decay = 0.01
    if kind == "demo":
        use_demo_data(c, resolution=32)
        c.data.crop_scale = (0.6, 1.0)
        c.num_epochs = 12
        c.optim.learning_rate = 4e-3
    return c
