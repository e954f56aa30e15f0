"""Image data sets held in memory as uint8 arrays, and step-indexed batch sampling."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from megathread_jax.data import cifar10, demo, image_folder, tiny_imagenet
from megathread_jax.errors import ConfigurationError

# Per-channel statistics in [0, 1] units.
NORMALISATIONS = {
    "tiny_imagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # inputs in [0, 1], as timm's MobileViT weights expect
}


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    name: str
    train_images: np.ndarray  # uint8 (N, H, W, 3)
    train_labels: np.ndarray  # int32 (N,)
    val_images: np.ndarray
    val_labels: np.ndarray
    num_classes: int
    is_builtin_demo: bool = False
    class_names: tuple[str, ...] = ()  # empty where the data set names its classes by id only


def stored_size(data_config) -> int:
    """Pixels per side of the images held in memory: `image_size`, or the model's resolution at 0."""
    return data_config.image_size or data_config.resolution


def load(data_config) -> ImageDataset:
    """The data set named by `data_config.name`."""
    if data_config.name == "tiny_imagenet":
        arrays = tiny_imagenet.load(data_config.data_dir, download_if_missing=data_config.download)
        return ImageDataset("tiny_imagenet", **arrays, num_classes=200)
    if data_config.name == "cifar10":
        arrays = cifar10.load(data_config.data_dir, download_if_missing=data_config.download)
        return ImageDataset("cifar10", **arrays, num_classes=10, class_names=cifar10.CLASS_NAMES)
    if data_config.name == "image_folder":
        if not data_config.path:
            raise ConfigurationError(
                "config.data.name='image_folder' needs the folder: --config.data.path=DIR "
                f"(laid out as {image_folder.LAYOUT})"
            )
        arrays, names = image_folder.load(
            data_config.path, size=stored_size(data_config), val_fraction=data_config.val_fraction
        )
        return ImageDataset(
            f"image folder {data_config.path}", **arrays, num_classes=len(names), class_names=tuple(names)
        )
    if data_config.name == "demo_shapes":
        size = stored_size(data_config)
        train = demo.make_shapes(data_config.train_size, size, seed=0)
        val = demo.make_shapes(data_config.val_size, size, seed=1)
        return ImageDataset(
            "demo_shapes (built-in procedural data)",
            *train,
            *val,
            num_classes=len(demo.CLASS_NAMES),
            is_builtin_demo=True,
            class_names=demo.CLASS_NAMES,
        )
    if data_config.name == "synthetic":
        return _synthetic(data_config)
    raise ConfigurationError(
        f"unknown data set {data_config.name!r}; choose 'tiny_imagenet', 'cifar10', 'image_folder', 'demo_shapes' "
        "or 'synthetic'"
    )


def _synthetic(data_config) -> ImageDataset:
    """Random pixels and labels of a chosen shape: for timing runs at a data set's real size."""
    rng = np.random.default_rng(0)
    size, num_classes = stored_size(data_config), data_config.num_classes

    def split(n):
        return rng.integers(0, 256, (n, size, size, 3), np.uint8), rng.integers(0, num_classes, n).astype(np.int32)

    return ImageDataset(
        "synthetic (random pixels, for timing)",
        *split(data_config.train_size),
        *split(data_config.val_size),
        num_classes=num_classes,
        is_builtin_demo=True,
    )


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_indices(step: int, *, num_examples: int, batch_size: int, seed: int) -> np.ndarray:
    """Example indices of training batch `step`: a fresh seeded permutation every epoch.

    A pure function of the step, so a resumed run sees exactly the batches it would have seen.
    """
    steps_per_epoch = num_examples // batch_size
    if steps_per_epoch == 0:
        raise ConfigurationError(f"batch size {batch_size} is larger than the training set ({num_examples} examples)")
    epoch, i = divmod(step, steps_per_epoch)
    return _epoch_order(seed, epoch, num_examples)[i * batch_size : (i + 1) * batch_size]


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """Fixed-size batches over the whole split; the last one is padded and masked."""
    for start in range(0, len(images), batch_size):
        idx = np.arange(start, start + batch_size)
        valid = idx < len(images)
        idx = np.where(valid, idx, 0)
        yield {"image": images[idx], "label": labels[idx], "mask": valid}
