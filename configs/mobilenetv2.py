"""MobileNetV2 transfer learning on CIFAR-10 (part 1 of the series): which layers to freeze?

Variants (`--config=configs/mobilenetv2.py:VARIANT`):
  linear_probe  ImageNet backbone frozen (weights and batch-norm statistics), a new 10-class head
  finetune      every layer trained, the backbone at a tenth of the head's learning rate (default)
  gradual       the head first, then backbone blocks unfrozen from the top down
  scratch       random initialisation, for comparison
  demo          built-in procedural shapes, a few minutes on a CPU
"""

import ml_collections

VARIANTS = ("linear_probe", "finetune", "gradual", "scratch", "demo")


def get_config(variant: str = "finetune") -> ml_collections.ConfigDict:
    variant = variant or "finetune"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of configs/mobilenetv2.py; choose one of {', '.join(VARIANTS)}")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "mobilenet_v2"
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    c.model.width_mult = 1.0
    c.model.drop_rate = 0.2
    c.model.depthwise_impl = "auto"
    # "torchvision" = IMAGENET1K_V2 weights ("torchvision:IMAGENET1K_V1" for V1; "timm" for timm's),
    # or a directory written by `python -m megathread_jax.convert`; "" = random init.
    c.init_from = "torchvision"

    # Which parameters train (see megathread_jax/freezing.py): path patterns like "features.[0-13]".
    c.freeze = ""
    c.unfreeze = ""
    c.lr_multipliers = ""

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"
    c.data.data_dir = "~/.cache/megathread_jax/tensorflow_datasets"
    c.data.download = True
    c.data.resolution = 96  # 32 native; 96/160/224 show the pretrained backbone a familiar scale
    c.data.crop = "pad"
    c.data.crop_padding = 4
    c.data.crop_scale = (0.5, 1.0)  # random_resized crop only
    c.data.normalisation = "imagenet"
    # used by the built-in demo data only
    c.data.image_size = 32
    c.data.train_size = 0
    c.data.val_size = 0

    c.num_epochs = 10
    c.batch_size = 128
    c.eval_batch_size = 500
    c.label_smoothing = 0.1

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"
    c.optim.learning_rate = 1e-3
    c.optim.final_lr_fraction = 0.01
    c.optim.warmup_epochs = 0.5
    c.optim.weight_decay = 0.01
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.momentum = 0.0  # sgd only
    c.optim.grad_clip_norm = 1.0

    c.log_every_steps = 100
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 2

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
        c.init_from = ""
        c.model.width_mult = 0.5
        c.data.name = "demo_shapes"
        c.data.resolution = 64  # at 32 px MobileNetV2's last map is 1x1 and it learns little here
        c.data.train_size = 4000
        c.data.val_size = 1000
        c.num_epochs = 8
        c.batch_size = 64
        c.eval_batch_size = 200
        c.optim.learning_rate = 2e-3
        c.optim.warmup_epochs = 1.0
        c.log_every_steps = 20
        c.checkpoint_every_steps = 0
    return c
