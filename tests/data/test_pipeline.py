"""Batch order, augmentation and the built-in demo data."""

import jax
import numpy as np

from megathread_jax import data
from megathread_jax.data import augment, demo


def test_train_indices_are_a_pure_function_of_the_step():
    kwargs = dict(num_examples=100, batch_size=32, seed=7)
    epoch0 = np.concatenate([data.train_indices(s, **kwargs) for s in range(3)])
    assert len(set(epoch0)) == 96  # no repeats within an epoch
    again = data.train_indices(1, **kwargs)
    np.testing.assert_array_equal(again, epoch0[32:64])
    epoch1 = np.concatenate([data.train_indices(s, **kwargs) for s in range(3, 6)])
    assert not np.array_equal(epoch0, epoch1)  # reshuffled each epoch


def test_eval_batches_cover_every_example_once():
    labels = np.arange(10, dtype=np.int32)
    images = np.zeros((10, 4, 4, 3), np.uint8)
    seen = []
    for batch in data.eval_batches(images, labels, 4):
        assert batch["image"].shape[0] == 4
        seen += list(batch["label"][batch["mask"]])
    assert seen == list(range(10))


def test_augmentation_shapes_ranges_and_randomness():
    images = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    kwargs = dict(resolution=96, crop_scale=(0.35, 1.0), mean=(0.5,) * 3, std=(0.25,) * 3)
    a = jax.jit(lambda x, k: augment.train_preprocess(x, k, **kwargs))(images, jax.random.key(0))
    b = jax.jit(lambda x, k: augment.train_preprocess(x, k, **kwargs))(images, jax.random.key(1))
    assert a.shape == (8, 96, 96, 3) and a.dtype == np.float32
    assert float(a.min()) >= -2.0 - 1e-3 and float(a.max()) <= 2.0 + 1e-3
    assert not np.allclose(a, b)
    e = augment.eval_preprocess(images, resolution=64, mean=(0.5,) * 3, std=(0.25,) * 3)
    np.testing.assert_allclose(np.asarray(e), (images / 255.0 - 0.5) / 0.25, atol=1e-5)


def test_full_crop_without_flip_is_the_identity():
    images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    key = jax.random.key(3)
    out = augment._random_resized_crop(key, images[0].astype(np.float32), 16, (1.0, 1.0), (1.0, 1.0))
    np.testing.assert_allclose(np.asarray(out), images[0], atol=1e-3)


def test_demo_shapes_are_balanced_and_not_separable_by_colour():
    images, labels = demo.make_shapes(400, 32, seed=0)
    assert images.shape == (400, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), [40] * 10)
    # Mean colour per class is near the global mean: colour carries no label.
    means = np.stack([images[labels == c].mean(axis=(0, 1, 2)) for c in range(10)])
    assert np.abs(means - images.mean(axis=(0, 1, 2))).max() < 25
    again, _ = demo.make_shapes(400, 32, seed=0)
    np.testing.assert_array_equal(images, again)


def test_pad_and_crop_shifts_the_image_and_resizes():
    images = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    kwargs = dict(crop="pad", pad=4, mean=(0.0,) * 3, std=(1.0,) * 3)
    same = augment.train_preprocess(images, jax.random.key(0), resolution=32, **kwargs)
    assert same.shape == (4, 32, 32, 3)
    # every output is a shifted (possibly mirrored) window of the zero-padded input
    padded = np.pad(images / 255.0, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for out, source in zip(np.asarray(same), padded, strict=True):
        windows = [source[y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
        assert any(np.allclose(out, w, atol=1e-6) or np.allclose(out, w[:, ::-1], atol=1e-6) for w in windows)
    bigger = augment.train_preprocess(images, jax.random.key(0), resolution=96, **kwargs)
    assert bigger.shape == (4, 96, 96, 3)
