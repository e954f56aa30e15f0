"""Building blocks shared by the image models: PyTorch-faithful conv and batch norm in NHWC."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

DEPTHWISE_IMPLS = ("auto", "shifted", "lax")


def resolve_depthwise_impl(impl: str) -> str:
    """Picks the depthwise formulation for the current backend.

    Measured (see README, Performance): on XLA:CPU a 3x3 depthwise conv written as k*k shifted
    multiply-adds is several times faster forward+backward than `feature_group_count=C`; on GPU
    cuDNN's grouped convolution is used.
    """
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise_impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "shifted" if jax.default_backend() == "cpu" else "lax"
    return impl


class Conv2d(nnx.Module):
    """NHWC convolution with PyTorch's symmetric padding ((k-1)//2 per side, also at stride 2)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        use_bias: bool = False,
        dtype: jnp.dtype = jnp.float32,
        depthwise_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        if in_features % groups or out_features % groups:
            raise ValueError(f"channels {in_features}->{out_features} not divisible by groups={groups}")
        self.stride = stride
        self.groups = groups
        self.padding = (kernel_size - 1) // 2
        self.dtype = dtype
        self.is_depthwise = groups == in_features == out_features and groups > 1
        self.depthwise_impl = resolve_depthwise_impl(depthwise_impl)
        fan_out = out_features // groups * kernel_size * kernel_size
        kernel_shape = (kernel_size, kernel_size, in_features // groups, out_features)
        # He (fan-out) normal, as timm and torchvision initialise convolutions.
        self.kernel = nnx.Param(
            jax.random.normal(rngs.params(), kernel_shape, jnp.float32) * (2.0 / fan_out) ** 0.5
        )
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        kernel = self.kernel[...].astype(self.dtype)
        if self.is_depthwise and self.depthwise_impl == "shifted":
            y = _depthwise_shifted(x, kernel, self.stride, self.padding)
        else:
            pad = ((self.padding, self.padding), (self.padding, self.padding))
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(self.stride, self.stride),
                padding=pad,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.groups,
            )
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def _depthwise_shifted(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """Depthwise conv as a sum of k*k shifted, strided slices times per-channel weights."""
    kh, kw = kernel.shape[:2]
    _, h, w, _ = x.shape
    out_h = (h + 2 * padding - kh) // stride + 1
    out_w = (w + 2 * padding - kw) // stride + 1
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    y = None
    for i in range(kh):
        for j in range(kw):
            window = jax.lax.slice(
                xp,
                (0, i, j, 0),
                (xp.shape[0], i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, xp.shape[3]),
                (1, stride, stride, 1),
            )
            term = window * kernel[i, j, 0]
            y = term if y is None else y + term
    return y


class BatchNorm(nnx.Module):
    """Batch norm with PyTorch semantics.

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

    def __call__(self, x: jax.Array) -> jax.Array:
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
        return (x.astype(jnp.float32) * inv + shift).astype(x.dtype)


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
        depthwise_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        self.conv = Conv2d(
            in_features,
            out_features,
            kernel_size,
            stride=stride,
            groups=groups,
            dtype=dtype,
            depthwise_impl=depthwise_impl,
            rngs=rngs,
        )
        self.bn = BatchNorm(out_features)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.bn(self.conv(x))
        return jax.nn.silu(x) if self.activation else x


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
