"""A user's own images, in the folder layout torchvision's `ImageFolder` and Keras read.

`DIR/train/<class>/*` and `DIR/val/<class>/*`, or `DIR/<class>/*` split per class by a seeded draw
(`val_fraction` of each class held out). Class names are the folder names, sorted. Every image is
decoded once to uint8 RGB, `size` x `size`: upright by its EXIF orientation, transparency over
white, 16-bit scaled to 8, the shorter side resized to `size` and the centre cropped (the crop
validation uses for ImageNet models). The arrays are cached in `DIR/.megathread_jax_cache/`,
keyed by every file's path, size and modification time, so a changed folder is decoded again.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pathlib
import shutil

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from megathread_jax import progress
from megathread_jax.data.cache import load_arrays, save_arrays
from megathread_jax.errors import DataNotFoundError

CACHE_VERSION = 1
CACHE_FOLDER = ".megathread_jax_cache"
CLASS_NAMES_FILE = "class_names.json"
SPLIT_SEED = 0  # the split depends on the files only, never on the run's seed
LAYOUT = "DIR/train/<class>/* and DIR/val/<class>/*, or DIR/<class>/* with --config.data.val_fraction"


def image_extensions() -> frozenset[str]:
    Image.init()  # registers every format PIL can open
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _class_files(folder: pathlib.Path, extensions: frozenset[str]) -> dict[str, list[pathlib.Path]]:
    """Class name -> its image files (any depth below the class folder), hidden entries skipped."""
    classes = {}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            p
            for p in class_dir.rglob("*")
            if p.is_file()
            and p.suffix.lower() in extensions
            and not any(part.startswith(".") for part in p.relative_to(class_dir).parts)
        )
        if not files:
            raise DataNotFoundError(f"class folder {class_dir} holds no images; add some or remove it")
        classes[class_dir.name] = files
    return classes


def _list_splits(
    root: pathlib.Path, val_fraction: float
) -> tuple[list[str], dict[str, list[tuple[pathlib.Path, int]]]]:
    """The class names and, per split, (file, label) pairs."""
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist (expected {LAYOUT})")
    extensions = image_extensions()
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, val = _class_files(root / "train", extensions), _class_files(root / "val", extensions)
        unknown = sorted(set(val) - set(train))
        if unknown:
            raise DataNotFoundError(
                f"{root / 'val'} has classes that {root / 'train'} lacks: {', '.join(unknown)}; "
                "every validation class needs training images"
            )
        names = sorted(train)
        index = {name: i for i, name in enumerate(names)}
        splits = {
            split: [(f, index[name]) for name, files in classes.items() for f in files]
            for split, classes in (("train", train), ("val", val))
        }
    else:
        classes = _class_files(root, extensions)
        names = sorted(classes)
        splits = {"train": [], "val": []}
        rng = np.random.default_rng(SPLIT_SEED)
        for label, name in enumerate(names):
            files = classes[name]
            if len(files) < 2:
                raise DataNotFoundError(
                    f"class folder {root / name} holds one image: a class needs two or more to have one to "
                    "validate on (or use train/ and val/ folders)"
                )
            order = rng.permutation(len(files))
            num_val = min(max(1, round(val_fraction * len(files))), len(files) - 1)
            splits["val"] += [(files[i], label) for i in sorted(order[:num_val])]
            splits["train"] += [(files[i], label) for i in sorted(order[num_val:])]
    if len(names) < 2:
        found = f"only the class {names[0]!r}" if names else "no class folders"
        raise DataNotFoundError(f"{root} has {found}: classification needs two or more ({LAYOUT})")
    return names, splits


def decode_image(path: pathlib.Path, size: int) -> np.ndarray:
    """One file as uint8 RGB `(size, size, 3)`: upright, shorter side to `size`, centre-cropped."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I"):  # 16- or 32-bit integer greyscale: keep the top 8 bits' range
                bits = np.asarray(img, np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or bits.max() > 255 else 255.0
                img = Image.fromarray(np.clip(bits / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            img = ImageOps.fit(img.convert("RGB"), (size, size), Image.BILINEAR)
            return np.asarray(img, np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        reason = "not an image PIL can read" if isinstance(e, UnidentifiedImageError) else str(e).splitlines()[0]
        raise DataNotFoundError(f"{path} is unreadable ({reason}); replace or remove it") from None


def _decode_split(files: list[pathlib.Path], size: int, desc: str) -> np.ndarray:
    images = np.empty((len(files), size, size, 3), np.uint8)
    # PIL releases the GIL while it decodes, so threads use every core.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    try:
        decoded = pool.map(decode_image, files, [size] * len(files))
        for i, image in enumerate(progress.bar(decoded, total=len(files), desc=desc, unit="img", leave=False)):
            images[i] = image
    finally:
        pool.shutdown(cancel_futures=True)  # after an unreadable file, the rest is not decoded
    return images


def _cache_key(root: pathlib.Path, splits: dict[str, list[tuple[pathlib.Path, int]]], size: int) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION} size={size}".encode())
    for split, items in splits.items():
        for path, label in items:
            stat = path.stat()
            digest.update(f"{split}\0{path.relative_to(root)}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def load(path: str | os.PathLike, *, size: int, val_fraction: float) -> tuple[dict[str, np.ndarray], list[str]]:
    """Train/val uint8 images `(N, size, size, 3)` and int32 labels, and the class names."""
    root = pathlib.Path(path).expanduser().absolute()
    names, splits = _list_splits(root, val_fraction)
    cache_root = root / CACHE_FOLDER
    cache = cache_root / _cache_key(root, splits, size)
    cached = load_arrays(cache)
    if cached is not None:
        return cached, names
    arrays = {}
    for split, items in splits.items():
        arrays[f"{split}_images"] = _decode_split([f for f, _ in items], size, f"decoding {split} images")
        arrays[f"{split}_labels"] = np.asarray([label for _, label in items], np.int32)
    if cache_root.is_dir():  # the folder changed: earlier caches describe files that are gone
        shutil.rmtree(cache_root, ignore_errors=True)
    try:
        save_arrays(cache, arrays)
        (cache / CLASS_NAMES_FILE).write_text(json.dumps(names, ensure_ascii=False))
    except OSError as e:  # a read-only folder: train anyway, decoding again next time
        progress.message(f"could not cache the decoded images in {cache_root} ({e}); they are decoded on each run")
    return arrays, names
