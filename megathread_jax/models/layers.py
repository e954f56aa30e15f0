"""Building blocks shared by the image models: PyTorch-faithful batch norm, conv -> norm ->
activation, and linear layers, in NHWC."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from megathread_jax.models.convolution import Conv2d


def silu(x: jax.Array) -> jax.Array:
    """x * sigmoid(x), the sigmoid written as 0.5 + 0.5 * tanh(x / 2).

    The same function up to float32 rounding; XLA:CPU evaluates tanh with a fast rational
    approximation, while its sigmoid goes through exp and a division (docs/performance.md).
    """
    return x * (0.5 + 0.5 * jnp.tanh(0.5 * x))


class BatchNorm(nnx.Module):
    """Batch norm with PyTorch semantics, optionally followed by an activation.

    Statistics are computed in float32. In training the running variance is updated with the
    unbiased batch variance (as PyTorch does) while normalising with the biased one, so running
    statistics stay equal to the PyTorch reference's after training steps. `momentum` is PyTorch's
    (weight of the new batch). Under `jit` over a sharded batch the means are global.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-5):
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = False

    def __call__(self, x: jax.Array, activation: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
        """`activation(batch_norm(x))`, or the batch norm alone."""
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean = jnp.mean(xf, axes)
            var = jnp.mean(jnp.square(xf - mean), axes)
            n = x.size // x.shape[-1]
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            unbiased = jax.lax.stop_gradient(var) * (n / max(n - 1, 1))
            self.var[...] = (1 - m) * self.var[...] + m * unbiased
        inv = jax.lax.rsqrt(var + self.epsilon) * self.scale[...]
        shift = self.bias[...] - mean * inv
        return _scale_shift_activate(x, inv, shift, activation)


# Recomputed in the backward pass from `x` (kept anyway for the statistics' gradient) instead of
# stored: the forward pass then writes only its output (docs/performance.md).
@functools.partial(jax.checkpoint, static_argnums=(3,))
def _scale_shift_activate(
    x: jax.Array, inv: jax.Array, shift: jax.Array, activation: Callable[[jax.Array], jax.Array] | None
) -> jax.Array:
    y = x.astype(jnp.float32) * inv + shift
    return (y if activation is None else activation(y)).astype(x.dtype)


class ConvNormAct(nnx.Module):
    """conv -> bn -> optional activation; attribute names follow timm's ConvNormAct."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
        dtype: jnp.dtype = jnp.float32,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        self.conv = Conv2d(
            in_features,
            out_features,
            kernel_size,
            stride=stride,
            groups=groups,
            dtype=dtype,
            conv_impl=conv_impl,
            rngs=rngs,
        )
        self.bn = BatchNorm(out_features)
        self.activation = activation

    def __call__(self, *parts: jax.Array) -> jax.Array:
        """See `Conv2d.__call__`: one input, or several concatenated along channels."""
        return self.bn(self.conv(*parts), silu if self.activation else None)


def torch_linear(
    in_features: int, out_features: int, *, dtype: jnp.dtype, rngs: nnx.Rngs, use_bias: bool = True
) -> nnx.Linear:
    """nnx.Linear initialised like PyTorch's nn.Linear."""
    init = functools.partial(_torch_uniform_init, fan_in=in_features)
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=init,
        bias_init=init,
        rngs=rngs,
    )


def _torch_uniform_init(key, shape, dtype=jnp.float32, *, fan_in: int):
    bound = 1.0 / max(fan_in, 1) ** 0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)
