"""CIFAR-10 loading through tensorflow-datasets, on its mock data (no download, no TensorFlow)."""

import numpy as np
import pytest
from tensorflow_datasets.testing import mocking

from megathread_jax.data import cifar10
from megathread_jax.errors import DataNotFoundError


def test_loads_mock_cifar10_and_caches(tmp_path):
    with mocking.mock_data(num_examples=12, policy=mocking.MockPolicy.USE_CODE):
        arrays = cifar10.load(tmp_path)
    for split in ("train", "val"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 10
    cached = cifar10.load(tmp_path)  # outside the mock: read back from the cache
    for name, array in arrays.items():
        np.testing.assert_array_equal(cached[name], array)


def test_unprepared_without_download_says_what_to_do(tmp_path):
    with pytest.raises(DataNotFoundError, match="configs/mobilenetv2.py:demo"):
        cifar10.load(tmp_path, download_if_missing=False)


def test_preparing_without_tensorflow_says_how_to_install(tmp_path, monkeypatch):
    class Builder:
        def download_and_prepare(self):
            raise ModuleNotFoundError("No module named 'tensorflow'")

    with pytest.raises(DataNotFoundError, match="pip install tensorflow"):
        cifar10._prepare(Builder(), tmp_path)
