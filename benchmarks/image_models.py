"""Image-model rows: the train step against timm's or torchvision's, the input path, a whole run.

The train step (AdamW, label-smoothed cross-entropy, data already on the device) is timed against
timm's (MobileViT) or torchvision's (MobileNetV2) model in eager mode (with `--torch-compile` also
under `torch.compile`), on a GPU with autocast and channels-last for bfloat16. The input path
times the same step fed as training is (uint8 images in host memory, gathered by step, augmented
on the device) against synthetic images already on the device. End to end times
`train_and_evaluate` on in-memory random images of Tiny ImageNet's size and shape.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp

from benchmarks.table import row
from benchmarks.timing import (
    profile_dir,
    seconds_per_call,
    seconds_per_flax_step,
    synthetic_image_batch,
    synthetic_image_loss,
    torch_compiled,
    torch_device_and_sync,
)
from megathread_jax import models, parallel, tasks, train
from megathread_jax.config_base import load_config
from megathread_jax.models.convolution import resolve_conv_impl


def _timm(name: str):
    def build(num_classes: int):
        import timm

        return timm.create_model(name, num_classes=num_classes)

    return build


def _torchvision_mobilenet_v2(num_classes: int):
    import torchvision

    return torchvision.models.mobilenet_v2(num_classes=num_classes)


# model -> (reference label, reference builder, classes of the series' data set)
REFERENCES = {
    "mobilevit_xxs": ("timm eager", _timm("mobilevit_xxs"), 200),
    "mobilevit_xs": ("timm eager", _timm("mobilevit_xs"), 200),
    "mobilevit_s": ("timm eager", _timm("mobilevit_s"), 200),
    "mobilenet_v2": ("torchvision eager", _torchvision_mobilenet_v2, 10),
}
# The series' MobileViT recipe; its data replaced by random uint8 images of Tiny ImageNet's size.
SERIES_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "mobilevit.py"


def time_flax(
    model_name: str,
    batch_size: int,
    resolution: int,
    dtype: str,
    steps: int,
    warmup: int,
    conv_impl: str,
    profile_to: pathlib.Path | None = None,
) -> float:
    """Images per second of the jitted train step (compile excluded)."""
    num_classes = REFERENCES[model_name][2]
    model = models.create(model_name, num_classes=num_classes, dtype=dtype, conv_impl=conv_impl)
    batch = jax.tree.map(jnp.asarray, synthetic_image_batch(batch_size, resolution, num_classes))
    return batch_size / seconds_per_flax_step(
        model, synthetic_image_loss, lambda step: batch, steps, warmup, profile_to=profile_to
    )


def time_reference(
    model_name: str,
    batch_size: int,
    resolution: int,
    dtype: str,
    steps: int,
    warmup: int,
    compiled: bool = False,
    profile_to: pathlib.Path | None = None,
) -> float:
    """Images per second of the PyTorch reference's train step, eager or under `torch.compile`."""
    import torch

    _, build, num_classes = REFERENCES[model_name]
    device, sync = torch_device_and_sync()
    model = build(num_classes).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    images = torch.rand(batch_size, 3, resolution, resolution, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    low_precision = dtype != "float32" and device == "cuda"
    if low_precision:
        model = model.to(memory_format=torch.channels_last)
        images = images.to(memory_format=torch.channels_last)
    forward = torch_compiled(model) if compiled else model

    def step():
        with torch.autocast(device, dtype=getattr(torch, dtype), enabled=low_precision):
            loss = torch.nn.functional.cross_entropy(forward(images), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return batch_size / seconds_per_call(step, sync, steps, warmup, profile_to)


def _synthetic_image_config(
    model_name: str, batch_size: int, resolution: int, dtype: str, conv_impl: str, num_images: int
):
    """The series' `pretrained_{64,96}` run (random init: same compute) on in-memory random images."""
    if model_name != "mobilevit_xxs":
        raise ValueError(
            "--input-path and --e2e-epochs time the series' MobileViT-XXS recipe: use --model mobilevit_xxs"
        )
    variant = "pretrained_64" if resolution <= 64 else "pretrained_96"
    overrides = {
        "init_from": "",
        "data.name": "synthetic",
        "data.image_size": 64,
        "data.num_classes": 200,
        "data.train_size": num_images,
        "data.val_size": max(num_images // 10, batch_size),
        "data.resolution": resolution,
        "batch_size": batch_size,
        "model.dtype": dtype,
        "model.conv_impl": conv_impl,
    }
    return load_config(f"{SERIES_CONFIG}:{variant}", overrides)


def time_input_path(
    model_name: str,
    batch_size: int,
    resolution: int,
    dtype: str,
    steps: int,
    warmup: int,
    conv_impl: str,
    num_images: int,
) -> tuple[float, float]:
    """Images per second of the train step fed as in training (uint8 in host memory, gathered by
    step, augmented on the device), and fed synthetic images already on the device."""
    task = tasks.create(_synthetic_image_config(model_name, batch_size, resolution, dtype, conv_impl, num_images))
    mesh = parallel.make_mesh()
    num_classes = task.model_kwargs["num_classes"]
    synthetic = parallel.shard_batch(mesh, synthetic_image_batch(batch_size, resolution, num_classes))

    def timed(loss, batch_of_step) -> float:
        model = models.create(model_name, num_classes=num_classes, dtype=dtype, conv_impl=conv_impl)
        return batch_size / seconds_per_flax_step(model, loss, batch_of_step, steps, warmup, mesh)

    real = timed(task.loss, lambda step: parallel.shard_batch(mesh, task.train_batch(step)))
    return real, timed(synthetic_image_loss, lambda step: synthetic)


def time_end_to_end(
    model_name: str, batch_size: int, resolution: int, dtype: str, conv_impl: str, epochs: int, num_images: int
) -> float:
    """Wall seconds of `train_and_evaluate` (compilation, training, evaluation, checkpoints)."""
    config = _synthetic_image_config(model_name, batch_size, resolution, dtype, conv_impl, num_images)
    config.num_epochs = epochs
    config.optim.warmup_epochs = min(config.optim.warmup_epochs, epochs)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        train.train_and_evaluate(config, workdir)
        return time.perf_counter() - start


def rows(args: argparse.Namespace) -> list[dict]:
    """The rows one command line asks for: the train step against the reference, or the input
    path and/or a whole run."""
    impl = resolve_conv_impl(args.conv_impl)
    setting = f"train b{args.batch_size} {args.resolution}px {args.dtype} conv={impl}"
    common = (args.batch_size, args.resolution, args.dtype, args.steps, args.warmup)
    made = []
    if args.input_path:
        real, synthetic = time_input_path(args.model, *common, impl, args.num_images)
        made.append(
            row(
                args.model,
                f"{setting}, input path: {args.num_images} uint8 images in host memory, augmented on the device",
                "images/s",
                real,
                "synthetic on device",
                synthetic,
            )
        )
    if args.e2e_epochs:
        seconds = time_end_to_end(
            args.model, args.batch_size, args.resolution, args.dtype, impl, args.e2e_epochs, args.num_images
        )
        made.append(
            row(
                args.model,
                f"end to end, pretrained recipe, {args.e2e_epochs} epochs of {args.num_images} "
                f"64px images at {args.resolution}px, {args.dtype}",
                "s",
                seconds,
                "-",
                None,
            )
        )
    if made:
        return made
    ours = time_flax(args.model, *common, impl, profile_dir(args.profile, "ours"))
    eager = REFERENCES[args.model][0]
    reference = None
    if not args.no_reference:
        reference = time_reference(args.model, *common, profile_to=profile_dir(args.profile, eager))
    made.append(row(args.model, setting, "images/s", ours, eager, reference))
    if args.torch_compile and not args.no_reference:
        label = eager.replace("eager", "torch.compile")
        compiled = time_reference(args.model, *common, compiled=True, profile_to=profile_dir(args.profile, label))
        made.append(row(args.model, setting, "images/s", ours, label, compiled))
    return made
