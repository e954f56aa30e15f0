"""CIFAR-10 loading through tensorflow-datasets, on its mock data (no download, no TensorFlow)."""

import numpy as np
import pytest
from tensorflow_datasets.testing import mocking

from megathread_jax.data import cifar10
from megathread_jax.errors import DataNotFoundError


def test_loads_mock_cifar10_and_caches(tmp_path, monkeypatch):
    # The mock writes the prepared files itself: it needs none of what a real preparation does.
    monkeypatch.setattr(cifar10, "_missing_for_preparing", list)
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


def test_preparing_names_every_missing_package_before_downloading(tmp_path, monkeypatch):
    class Builder:
        def download_and_prepare(self):
            raise AssertionError("nothing may be downloaded before the packages are there")

    find_spec = cifar10.importlib.util.find_spec  # as on a machine without the cifar10 extra
    monkeypatch.setattr(
        cifar10.importlib.util,
        "find_spec",
        lambda name, *args: None if name in cifar10.PREPARE_NEEDS else find_spec(name, *args),
    )
    with pytest.raises(DataNotFoundError) as info:
        cifar10._prepare(Builder(), tmp_path)
    message = str(info.value)
    assert "needs tensorflow and importlib_resources" in message
    assert "pip install 'megathread_jax[cifar10]'" in message and "configs/mobilenetv2.py:demo" in message
    assert not list(tmp_path.iterdir())
