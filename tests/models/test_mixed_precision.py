"""Products with a float32 result: exact forward, gradients in the compute dtype, and no float32
matrix products left in the bfloat16 forward and backward passes of the models that use them."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from megathread_jax import models, tasks
from megathread_jax.models.mixed_precision import einsum_float32_out

SPEC = "btd,vd->btv"


def _operands(dtype):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (2, 48, 32)).astype(dtype)
    w = jax.random.normal(keys[1], (96, 32)).astype(dtype)
    cotangent = jax.random.normal(keys[2], (2, 48, 96))  # float32, as a softmax's
    return x, w, cotangent


def _grads(einsum, x, w, cotangent):
    return jax.grad(lambda x, w: jnp.sum(einsum(x, w) * cotangent), argnums=(0, 1))(x, w)


def _plain(x, w):
    return jnp.einsum(SPEC, x, w, preferred_element_type=jnp.float32)


def test_bfloat16_forward_is_the_float32_accumulated_product():
    x, w, _ = _operands(jnp.bfloat16)
    out = einsum_float32_out(SPEC, x, w)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), np.asarray(_plain(x, w)))


def test_bfloat16_gradients_are_bfloat16_and_close_to_float32():
    x, w, cotangent = _operands(jnp.bfloat16)
    ours = _grads(lambda x, w: einsum_float32_out(SPEC, x, w), x, w, cotangent)
    exact = _grads(_plain, x.astype(jnp.float32), w.astype(jnp.float32), cotangent)
    for got, want in zip(ours, exact, strict=True):
        assert got.dtype == jnp.bfloat16
        # The cotangent and the result are rounded to bfloat16 (8 bits): a few parts in a thousand.
        error = np.abs(np.asarray(got, np.float32) - np.asarray(want)).max()
        assert error < 1e-2 * np.abs(np.asarray(want)).max()


def test_long_contractions_accumulate_in_float32():
    x = jnp.ones((1, 4096, 8), jnp.bfloat16)
    w = jnp.ones((8, 8), jnp.bfloat16)
    grad_w = jax.grad(lambda w: jnp.sum(einsum_float32_out(SPEC, x, w)))(w)
    np.testing.assert_array_equal(np.asarray(grad_w, np.float32), 4096.0)  # a bfloat16 sum stops at 256


def test_float32_operands_are_the_plain_einsum():
    x, w, cotangent = _operands(jnp.float32)
    np.testing.assert_array_equal(np.asarray(einsum_float32_out(SPEC, x, w)), np.asarray(_plain(x, w)))
    for got, want in zip(
        _grads(lambda x, w: einsum_float32_out(SPEC, x, w), x, w, cotangent),
        _grads(_plain, x, w, cotangent),
        strict=False,
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_operands_of_two_dtypes_are_refused():
    x, w, _ = _operands(jnp.bfloat16)
    with pytest.raises(ValueError, match="one dtype"):
        einsum_float32_out(SPEC, x, w.astype(jnp.float32))


def _product_operand_dtypes(loss_fn, model) -> list[str]:
    text = jax.jit(lambda m: nnx.grad(loss_fn)(m)).lower(model).as_text()
    products = re.findall(r"stablehlo\.dot_general .*: \((.*)\) -> ", text)
    assert products, "no matrix products found in the lowered step"
    return [dtype for operands in products for dtype in re.findall(r"x(bf16|f32|f16)>", operands)]


@pytest.mark.parametrize("attn_pdrop", [0.0, 0.1])
def test_gpt2_bfloat16_gradients_multiply_in_bfloat16(attn_pdrop):
    model = models.create(
        "gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=16, dtype="bfloat16", attn_pdrop=attn_pdrop
    )
    model.train()
    ids = jnp.zeros((2, 16), jnp.int32)
    dtypes = _product_operand_dtypes(lambda m: tasks.next_token_loss(m(ids), ids), model)
    assert set(dtypes) == {"bf16"}, dtypes


def test_mobilevit_bfloat16_gradients_multiply_in_bfloat16():
    model = models.create("mobilevit_xxs", num_classes=10, dtype="bfloat16", conv_impl="matmul")
    model.train()
    images, labels = jnp.zeros((2, 64, 64, 3)), jnp.zeros((2,), jnp.int32)

    def loss_fn(m):
        logits = m(images).astype(jnp.float32)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    dtypes = _product_operand_dtypes(loss_fn, model)
    assert set(dtypes) == {"bf16"}, dtypes
