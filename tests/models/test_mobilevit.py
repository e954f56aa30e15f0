"""The model registry and module behaviour beyond fidelity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
from flax import nnx

from megathread_jax import models
from tests.conftest import run_flax


def _num_params(model) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s"])
def test_parameter_counts_equal_timm(name):
    reference = timm.create_model(name, num_classes=1000)
    assert _num_params(models.create(name, num_classes=1000)) == sum(p.numel() for p in reference.parameters())


def test_unknown_model_and_dtype_are_refused():
    with pytest.raises(ValueError, match="mobilevit_xxs"):
        models.create("mobilevit_xxxs", num_classes=10)
    with pytest.raises(ValueError, match="bfloat16"):
        models.create("mobilevit_xxs", num_classes=10, dtype="half")


def test_wrong_channel_count_is_a_clear_error():
    model = models.create("mobilevit_xxs", num_classes=10)
    with pytest.raises(ValueError, match="3 channels"):
        model(jnp.zeros((1, 32, 32, 1)))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = models.create("mobilevit_xxs", num_classes=10, dtype="bfloat16")
    reference = models.create("mobilevit_xxs", num_classes=10, dtype="float32")
    model.eval()
    reference.eval()
    x = np.random.default_rng(0).random((2, 64, 64, 3), np.float32)
    low, full = run_flax(model, x), run_flax(reference, x)
    assert low.dtype == np.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    np.testing.assert_allclose(low, full, atol=0.05 * np.abs(full).max() + 1e-3)


def test_dropout_is_active_in_train_mode_only():
    model = models.create("mobilevit_xxs", num_classes=10, drop_rate=0.5)
    x = np.random.default_rng(1).random((2, 32, 32, 3), np.float32)
    model.eval()
    np.testing.assert_array_equal(run_flax(model, x), run_flax(model, x))
    model.train()
    assert not np.allclose(run_flax(model, x), run_flax(model, x))
