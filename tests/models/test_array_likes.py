"""Every model takes NumPy arrays as it takes JAX arrays, at any batch size."""

import jax.numpy as jnp
import numpy as np
import pytest

from megathread_jax import models

IMAGE_MODELS = [
    ("mobilevit_xxs", {"num_classes": 5}),
    ("mobilenet_v2", {"num_classes": 5, "width_mult": 0.5}),
]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name, kwargs", IMAGE_MODELS, ids=[name for name, _ in IMAGE_MODELS])
def test_image_models_take_numpy_images(name, kwargs, batch):
    model = models.create(name, **kwargs)
    model.eval()
    images = np.random.default_rng(batch).random((batch, 32, 32, 3), np.float32)
    from_numpy = model(images)
    np.testing.assert_array_equal(np.asarray(from_numpy), np.asarray(model(jnp.asarray(images))))
    assert from_numpy.shape == (batch, 5)


@pytest.mark.parametrize("batch", [1, 3])
def test_gpt2_takes_numpy_ids_and_mask(batch):
    model = models.create("gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    model.eval()
    ids = np.random.default_rng(batch).integers(0, 50, (batch, 6))
    mask = np.ones((batch, 6), np.int64)
    mask[0, :2] = 0
    from_numpy = model(ids, attention_mask=mask)
    np.testing.assert_array_equal(
        np.asarray(from_numpy), np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    )
    assert from_numpy.shape == (batch, 6, 50)
    weights = model.attention_weights(ids)
    np.testing.assert_array_equal(np.asarray(weights), np.asarray(model.attention_weights(jnp.asarray(ids))))
