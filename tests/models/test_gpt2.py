"""GPT-2 options: precision, remat, dropout, attention implementation, config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from megathread_jax import models, tasks
from megathread_jax.errors import ConfigurationError

SMALL = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=32)
IDS = jnp.asarray(np.random.default_rng(0).integers(0, 300, (2, 16)))


def _loss_and_grads(model):
    def loss_fn(model):
        return tasks.next_token_loss(model(IDS), IDS)

    return nnx.value_and_grad(loss_fn)(model)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_loss_and_gradients(remat):
    plain = models.create("gpt2", seed=1, embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0, **SMALL)
    rematted = models.create("gpt2", seed=1, embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0, remat=remat, **SMALL)
    (loss_a, grads_a), (loss_b, grads_b) = _loss_and_grads(plain), _loss_and_grads(rematted)
    np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    full = models.create("gpt2", seed=2, **SMALL)
    half = models.create("gpt2", seed=2, dtype="bfloat16", **SMALL)
    full.eval(), half.eval()
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(half, nnx.Param)))
    logits_full, logits_half = np.asarray(full(IDS)), np.asarray(half(IDS))
    assert logits_half.dtype == np.float32
    assert np.abs(logits_half - logits_full).max() < 0.05 * np.abs(logits_full).max()


def test_dropout_only_in_training_mode():
    model = models.create("gpt2", seed=3, attn_pdrop=0.5, resid_pdrop=0.5, **SMALL)
    model.train()
    a, b = np.asarray(model(IDS)), np.asarray(model(IDS))
    assert not np.allclose(a, b)  # fresh dropout masks each call
    model.eval()
    np.testing.assert_array_equal(np.asarray(model(IDS)), np.asarray(model(IDS)))


def test_unsupported_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="unknown GPT-2 config field"):
        models.create("gpt2", n_layers=2)
    with pytest.raises(ValueError, match="not divisible"):
        models.create("gpt2", n_embd=100, n_head=3)


def test_cudnn_attention_builds_anywhere_and_is_refused_where_it_would_run():
    """Weights trained with cuDNN attention rebuild on a CPU; running the fused kernel there is a
    user error that says what to use instead."""
    model = models.create("gpt2", attention_impl="cudnn", dtype="bfloat16", attn_pdrop=0.0, **SMALL)
    model.eval()
    with pytest.raises(ConfigurationError, match="needs an NVIDIA GPU .* use attention_impl='xla'"):
        model(IDS)  # the suite runs on a CPU
    mask = np.ones(IDS.shape, np.int32)
    assert model(IDS, attention_mask=mask).shape == (2, 16, 300)  # padded batches never use the fused kernel


def test_weight_metadata_records_the_shape_only():
    model = models.create("gpt2", dtype="bfloat16", attention_impl="cudnn", remat="dots", resid_pdrop=0.3, **SMALL)
    shape = model.shape_kwargs()
    assert {k: shape[k] for k in SMALL} == SMALL
    assert not {"dtype", "attention_impl", "remat", "resid_pdrop", "embd_pdrop", "attn_pdrop"} & set(shape)
    rebuilt = models.create("gpt2", **shape)
    assert rebuilt.config.shape() == model.config.shape()


def test_published_sizes():
    assert models.gpt2.make_config("gpt2-xl").n_embd == 1600
    counts = sum(x.size for x in jax.tree.leaves(nnx.state(models.create("gpt2"), nnx.Param)))
    assert counts == 124_439_808 + (50_304 - 50_257) * 768  # Hugging Face's count plus the padding rows


def test_too_long_inputs_are_refused():
    model = models.create("gpt2", **SMALL)
    with pytest.raises(ValueError, match="exceed the model's 32 positions"):
        model(jnp.zeros((1, 33), jnp.int32))
