"""MobileNetV2 transfer learning on CIFAR-10 (part 1 of the series): which layers to freeze?

Variants: `--config=configs/mobilenetv2.py:VARIANT`; `:list` describes them.
"""

import ml_collections

from megathread_jax.config_base import base_config, pick_variant, use_demo_data

VARIANTS = {
    "linear_probe": "ImageNet backbone frozen (weights and batch-norm statistics), a new 10-class head, 5 epochs",
    "finetune": "every layer trained, the backbone at a tenth of the head's learning rate, 10 epochs",
    "gradual": "the head first, then backbone blocks unfrozen from the top down, 10 epochs",
    "scratch": "random initialisation at 32 px, 30 epochs, for comparison",
    "demo": "built-in procedural shapes (no download), MobileNetV2 x0.5 from scratch, about 3 minutes on a CPU",
}
DEFAULT_VARIANT = "finetune"


def get_config(variant: str = DEFAULT_VARIANT) -> ml_collections.ConfigDict:
    variant = pick_variant(variant, VARIANTS, DEFAULT_VARIANT, "configs/mobilenetv2.py")
    c = base_config(variant, "mobilenet_v2")
    c.model.width_mult = 1.0
    c.model.drop_rate = 0.2
    c.init_from = "torchvision"  # IMAGENET1K_V2; "torchvision:IMAGENET1K_V1" for V1, "timm" for timm's

    c.data.name = "cifar10"
    c.data.data_dir = "~/.cache/megathread_jax/tensorflow_datasets"
    c.data.resolution = 96  # 32 native; 96/160/224 show the pretrained backbone a familiar scale
    c.data.crop = "pad"
    c.data.normalisation = "imagenet"

    c.num_epochs = 10
    c.batch_size = 128
    c.eval_batch_size = 500
    c.optim.warmup_epochs = 0.5
    c.optim.weight_decay = 0.01

    if variant == "linear_probe":
        c.freeze = "features"
        c.num_epochs = 5
    elif variant == "finetune":
        c.lr_multipliers = "features=0.1"
    elif variant == "gradual":
        c.unfreeze = "features.[14-18]@2,features.[7-13]@4,features.[0-6]@6"
        c.lr_multipliers = "features=0.1"
    elif variant == "scratch":
        c.init_from = ""
        c.data.resolution = 32
        c.num_epochs = 30
        c.optim.learning_rate = 2e-3
        c.optim.weight_decay = 0.05
    elif variant == "demo":
        # at 32 px MobileNetV2's last map is 1x1 and it learns little of the layouts
        use_demo_data(c, resolution=64)
        c.model.width_mult = 0.5
        c.num_epochs = 8
        c.optim.learning_rate = 2e-3
        c.optim.warmup_epochs = 1.0
    return c
