"""CIFAR-10 through tensorflow-datasets, decoded once into cached uint8 arrays.

Preparing the data set (download + conversion) is tensorflow-datasets' job. Its CIFAR-10 builder
reads the downloaded files through TensorFlow (`tf.io.gfile`) and its dataset code needs
importlib_resources, so preparing needs both (the `cifar10` extra); reading a prepared copy
(`as_data_source`, array_record files) needs neither.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import numpy as np

from megathread_jax import progress
from megathread_jax.data.cache import load_arrays, save_arrays
from megathread_jax.errors import DataNotFoundError

CACHE_VERSION = 1
PREPARE_NEEDS = ("tensorflow", "importlib_resources")  # each installs under its import name
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _missing_for_preparing() -> list[str]:
    return [name for name in PREPARE_NEEDS if importlib.util.find_spec(name) is None]


def _prepare(builder, data_dir: pathlib.Path) -> None:
    missing = _missing_for_preparing()
    if missing:
        raise DataNotFoundError(
            f"preparing CIFAR-10 with tensorflow-datasets needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'megathread_jax[cifar10]' "
            "(or copy a prepared tensorflow_datasets/cifar10 folder into "
            f"{data_dir}), or try the built-in data: --config=configs/mobilenetv2.py:demo"
        )
    try:
        builder.download_and_prepare()
    except Exception as e:  # network errors come as many types
        raise DataNotFoundError(
            f"could not download CIFAR-10 into {data_dir} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            'Offline? Prepare it on a machine with a network (python -c "import tensorflow_datasets as tfds; '
            f"tfds.builder('cifar10', data_dir='{data_dir}', file_format='array_record').download_and_prepare()\") "
            "and copy the folder here, or try the built-in data: --config=configs/mobilenetv2.py:demo"
        ) from None


def _read_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    source = builder.as_data_source(split=split)
    images = np.empty((len(source), 32, 32, 3), np.uint8)
    labels = np.empty((len(source),), np.int32)
    for i in progress.bar(range(len(source)), desc=f"reading CIFAR-10 {split}", unit="img", leave=False):
        example = source[i]
        images[i] = example["image"]
        labels[i] = example["label"]
    return images, labels


def load(data_dir: str | os.PathLike, *, download_if_missing: bool = True) -> dict[str, np.ndarray]:
    """Train (50,000) and test (10,000, used for validation) uint8 images `(N, 32, 32, 3)` and labels."""
    import tensorflow_datasets as tfds

    data_dir = pathlib.Path(data_dir).expanduser()
    cache = data_dir / f"cifar10_cache_v{CACHE_VERSION}"
    cached = load_arrays(cache)
    if cached is not None:
        return cached
    builder = tfds.builder("cifar10", data_dir=str(data_dir), file_format="array_record")
    if not builder.is_prepared():
        if not download_if_missing:
            raise DataNotFoundError(
                f"CIFAR-10 is not prepared in {data_dir} and downloading is switched off; set "
                "--config.data.download=True, or try the built-in data: --config=configs/mobilenetv2.py:demo"
            )
        _prepare(builder, data_dir)
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "val")):
        arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"] = _read_split(builder, split)
    save_arrays(cache, arrays)
    return arrays
