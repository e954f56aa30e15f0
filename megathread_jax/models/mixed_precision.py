"""Products with a float32 result whose gradients run in the compute dtype, as under PyTorch's autocast."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def einsum_float32_out(spec: str, x: jax.Array, y: jax.Array) -> jax.Array:
    """`jnp.einsum(spec, x, y)` accumulated and returned in float32 (logits that feed a softmax).

    Differentiated as it is, a bfloat16 product with a float32 result has a float32 cotangent, and
    JAX's transposes then multiply in float32 (TF32 on a GPU: half the bfloat16 rate, and twice the
    bytes read). Here the cotangent is rounded to the operands' dtype first, as PyTorch's autocast
    does, so both gradient products run in that dtype. For float32 operands this is the plain einsum.
    """
    if x.dtype != y.dtype:
        raise ValueError(f"einsum_float32_out needs operands of one dtype, got {x.dtype} and {y.dtype}")
    if x.dtype == jnp.float32:
        return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)
    return _einsum_low_precision_grads(spec, x, y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum_low_precision_grads(spec: str, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)


def _forward(spec: str, x: jax.Array, y: jax.Array):
    return _einsum_low_precision_grads(spec, x, y), (x, y)


def _backward(spec: str, residuals, grad: jax.Array):
    x, y = residuals
    _, products_vjp = jax.vjp(functools.partial(jnp.einsum, spec), x, y)
    return products_vjp(grad.astype(x.dtype))


_einsum_low_precision_grads.defvjp(_forward, _backward)
