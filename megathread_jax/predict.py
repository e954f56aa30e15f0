"""Classify images with a trained or converted image model.

    python -m megathread_jax.predict --checkpoint WORKDIR_OR_WEIGHTS_DIR IMAGE_OR_FOLDER... [--top-k 5] [--json]

Each image is prepared as the model's validation images were (decoded upright to RGB, shorter side
resized and centre-cropped, resized to the model's resolution, normalised) and printed with its
top-k class names and probabilities. Folders are searched for images recursively.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from megathread_jax.errors import ConfigurationError, DataNotFoundError, exit_code_of

DEFAULT_TOP_K = 5
BATCH_SIZE = 32  # every batch is padded to this size, so one compilation serves any number of images


def image_files(paths: Sequence[str | pathlib.Path]) -> list[pathlib.Path]:
    """The files named, with folders expanded to the images below them (sorted)."""
    from megathread_jax.data import image_folder

    extensions = image_folder.image_extensions()
    files = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
            if not found:
                raise DataNotFoundError(f"folder {path} holds no images")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataNotFoundError(f"{path} does not exist")
    return files


def preprocessing(meta: dict[str, Any], directory: pathlib.Path) -> dict[str, Any]:
    """The weights' recorded preprocessing: `image_size`, `resolution`, `mean`, `std`."""
    if meta.get("model", "").startswith("gpt2"):
        raise ConfigurationError(
            f"{directory} holds {meta['model']!r} weights, a language model: predict classifies images "
            "(use python -m megathread_jax.generate for text)"
        )
    if "preprocess" not in meta:
        raise ConfigurationError(
            f"{directory} does not record how its images were prepared (weights from an older version, or "
            "a head that is not ImageNet's); train or convert them again"
        )
    return meta["preprocess"]


def _batches(files: list[pathlib.Path], image_size: int) -> Iterator[tuple[np.ndarray, int]]:
    from megathread_jax.data import image_folder

    for start in range(0, len(files), BATCH_SIZE):
        chunk = files[start : start + BATCH_SIZE]
        images = np.zeros((BATCH_SIZE, image_size, image_size, 3), np.uint8)
        for i, path in enumerate(chunk):
            images[i] = image_folder.decode_image(path, image_size)
        yield images, len(chunk)


def classify(
    directory: str | pathlib.Path, paths: Sequence[str | pathlib.Path], top_k: int | None = None
) -> list[dict]:
    """Per image: its path and the `top_k` (class name, probability) pairs, most probable first
    (by default 5, or every class of a model with fewer)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from megathread_jax import checkpoints
    from megathread_jax.data import augment

    directory = checkpoints.weights_directory(directory)
    model, meta = checkpoints.model_from_weights(directory)
    prep = preprocessing(meta, directory)
    num_classes = model.shape_kwargs()["num_classes"]
    top_k = min(DEFAULT_TOP_K, num_classes) if top_k is None else top_k
    if not 1 <= top_k <= num_classes:
        raise ConfigurationError(f"--top-k {top_k} is not valid: the model has {num_classes} classes")
    names = meta.get("class_names") or [f"class {i}" for i in range(num_classes)]
    files = image_files(paths)
    graphdef, state = nnx.split(model)

    @jax.jit
    def probabilities(state, images):
        inputs = augment.eval_preprocess(images, resolution=prep["resolution"], mean=prep["mean"], std=prep["std"])
        logits = nnx.merge(graphdef, state)(inputs).astype(jnp.float32)
        return jax.lax.top_k(jax.nn.softmax(logits), top_k)

    results = []
    batches = _batches(files, prep["image_size"])
    for (images, count), first in zip(batches, range(0, len(files), BATCH_SIZE), strict=True):
        top_probs, top_classes = jax.device_get(probabilities(state, images))
        for i in range(count):
            ranked = [(names[c], float(p)) for c, p in zip(top_classes[i], top_probs[i], strict=True)]
            results.append({"path": str(files[first + i]), "top_k": ranked})
    return results


def _print(results: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"path": r["path"], "top_k": [list(pair) for pair in r["top_k"]]} for r in results]))
        return
    for r in results:
        print(f"{r['path']}: " + ", ".join(f"{name} {p:.1%}" for name, p in r["top_k"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m megathread_jax.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a training workdir or a directory written by the converter"
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--top-k", type=int, help=f"classes shown per image (default {DEFAULT_TOP_K})")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of one line per image")
    args = parser.parse_args(argv)
    return exit_code_of(lambda: _print(classify(args.checkpoint, args.images, args.top_k), args.json))


if __name__ == "__main__":
    sys.exit(main())
