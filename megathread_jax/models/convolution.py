"""Convolutions in NHWC with PyTorch's symmetric padding, in two formulations.

"lax": `lax.conv_general_dilated` throughout (cuDNN on a GPU). "matmul": 1x1 convolutions as one
matrix product, other full convolutions as one product over the k*k shifted windows (im2col),
depthwise convolutions as k*k shifted multiply-adds with a written backward pass; on XLA:CPU these
run several times faster than `lax.conv_general_dilated` (docs/performance.md). Both compute the
same function; the tests check each against timm and torchvision at model level.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from megathread_jax.errors import ConfigurationError

CONV_IMPLS = ("auto", "matmul", "lax")


def resolve_conv_impl(impl: str) -> str:
    """Picks how convolutions are computed on the current backend.

    "matmul" (the default on CPU): 1x1 convolutions as one matrix product, other full convolutions
    as a matrix product over the k*k shifted windows (im2col), depthwise convolutions as k*k shifted
    multiply-adds with a hand-written backward pass. On XLA:CPU each is several times faster
    forward+backward than `lax.conv_general_dilated` (docs/performance.md). "lax" (the
    default elsewhere): `lax.conv_general_dilated` throughout, which cuDNN serves on GPU.
    """
    if impl not in CONV_IMPLS:
        raise ConfigurationError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "lax"
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
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        if in_features % groups or out_features % groups:
            raise ValueError(f"channels {in_features}->{out_features} not divisible by groups={groups}")
        self.stride = stride
        self.groups = groups
        self.padding = (kernel_size - 1) // 2
        self.dtype = dtype
        self.is_depthwise = groups == in_features == out_features and groups > 1
        self.conv_impl = resolve_conv_impl(conv_impl)
        fan_out = out_features // groups * kernel_size * kernel_size
        kernel_shape = (kernel_size, kernel_size, in_features // groups, out_features)
        # He (fan-out) normal, as timm and torchvision initialise convolutions.
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), kernel_shape, jnp.float32) * (2.0 / fan_out) ** 0.5)
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None

    def __call__(self, *parts: jax.Array) -> jax.Array:
        """The convolution of `parts` (NHWC arrays or array-likes) concatenated along channels; of
        one array, its plain convolution. The kernel's input channels follow the parts' order."""
        if not parts:
            raise TypeError("Conv2d needs at least one input")
        parts = [jnp.asarray(part).astype(self.dtype) for part in parts]
        kernel = self.kernel[...].astype(self.dtype)
        if self.conv_impl == "matmul" and self.groups == 1:
            # One product per part with its rows of the kernel, summed: no concatenated copy of the
            # input and its window columns.
            part_kernels = jnp.split(kernel, np.cumsum([part.shape[-1] for part in parts])[:-1], axis=2)
            ys = [
                conv_as_matmul(part, k, self.stride, self.padding) for part, k in zip(parts, part_kernels, strict=True)
            ]
            y = sum(ys[1:], ys[0])
        else:
            x = jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
            if self.conv_impl == "matmul" and self.is_depthwise:
                y = depthwise_conv(x, kernel, self.stride, self.padding)
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


def _output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _windows(xp: jax.Array, kh: int, kw: int, out_h: int, out_w: int, stride: int):
    """The k*k strided windows of a padded NHWC array, in kernel order (i, j)."""
    n, _, _, c = xp.shape
    for i in range(kh):
        for j in range(kw):
            yield jax.lax.slice(
                xp,
                (0, i, j, 0),
                (n, i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, c),
                (1, stride, stride, 1),
            )


def _pad_spatial(x: jax.Array, padding: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))


def conv_as_matmul(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """Full (groups=1) NHWC convolution as one matrix product; k*k windows concatenated (im2col)."""
    kh, kw, c, out_features = kernel.shape
    n, h, w, _ = x.shape
    if kh == kw == 1 and stride == 1:
        return (x.reshape(-1, c) @ kernel.reshape(c, out_features)).reshape(n, h, w, out_features)
    out_h, out_w = _output_size(h, kh, stride, padding), _output_size(w, kw, stride, padding)
    # The barrier makes XLA compute the producer of `x` (batch norm, activation) once, instead of
    # fusing a copy of it into each of the k*k window reads.
    x = jax.lax.optimization_barrier(x)
    columns = jnp.concatenate(list(_windows(_pad_spatial(x, padding), kh, kw, out_h, out_w, stride)), axis=-1)
    y = columns.reshape(-1, kh * kw * c) @ kernel.reshape(kh * kw * c, out_features)
    return y.reshape(n, out_h, out_w, out_features)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """Depthwise NHWC convolution (kernel `(kh, kw, 1, C)`) as k*k shifted multiply-adds.

    The backward pass is written out: under autodiff of the slices XLA fuses the recomputation of
    the forward pass into each of the k*k gradient reads.
    """
    return _depthwise_forward(x, kernel, stride, padding)[0]


def _depthwise_forward(x, kernel, stride, padding):
    kh, kw = kernel.shape[:2]
    out_h, out_w = _output_size(x.shape[1], kh, stride, padding), _output_size(x.shape[2], kw, stride, padding)
    x = jax.lax.optimization_barrier(x)  # as in conv_as_matmul
    return _windows_times_kernel(_pad_spatial(x, padding), kernel, out_h, out_w, stride), (x, kernel)


def _windows_times_kernel(xp: jax.Array, kernel: jax.Array, out_h: int, out_w: int, stride: int) -> jax.Array:
    """The sum over kernel positions of each window of `xp` times that position's per-channel weights."""
    kh, kw = kernel.shape[:2]
    weights = kernel.reshape(kh * kw, -1)
    return sum(window * weights[k] for k, window in enumerate(_windows(xp, kh, kw, out_h, out_w, stride)))


def _depthwise_backward(stride, padding, residuals, grad):
    x, kernel = residuals
    grad = jax.lax.optimization_barrier(grad)
    kh, kw = kernel.shape[:2]
    n, out_h, out_w, c = grad.shape
    h, w = x.shape[1], x.shape[2]
    kernel_grad = _depthwise_kernel_grad(x, grad, kh, kw, stride, padding).reshape(kh, kw, 1, c)
    # The input gradient is a stride-1 depthwise conv of the zero-dilated gradient with the flipped
    # kernel: input row p receives grad[r] * kernel[i] wherever p = stride * r + i - padding.
    low_h, low_w = kh - 1 - padding, kw - 1 - padding
    dilated = jax.lax.pad(
        grad,
        jnp.zeros((), grad.dtype),
        (
            (0, 0, 0),
            (low_h, h + kh - 1 - low_h - (stride * (out_h - 1) + 1), stride - 1),
            (low_w, w + kw - 1 - low_w - (stride * (out_w - 1) + 1), stride - 1),
            (0, 0, 0),
        ),
    )
    return _windows_times_kernel(dilated, kernel[::-1, ::-1], h, w, 1), kernel_grad


depthwise_conv.defvjp(_depthwise_forward, _depthwise_backward)

# Bytes of input per chunk of the batch for the kernel gradient: the k*k window products of a
# chunk then stay in cache (docs/performance.md).
_KERNEL_GRAD_CHUNK_BYTES = 1 << 20


def _depthwise_kernel_grad(x: jax.Array, grad: jax.Array, kh: int, kw: int, stride: int, padding: int) -> jax.Array:
    """`(kh*kw, C)`: the sum over batch and positions of each window of padded `x` times `grad`."""
    n, out_h, out_w, c = grad.shape
    per_example = x[0].size * x.dtype.itemsize
    chunk = max([d for d in range(1, n + 1) if n % d == 0 and d * per_example <= _KERNEL_GRAD_CHUNK_BYTES] or [1])

    def chunk_sums(x_chunk, grad_chunk):
        windows = _windows(_pad_spatial(x_chunk, padding), kh, kw, out_h, out_w, stride)
        return jnp.stack([jnp.sum(window * grad_chunk, axis=(0, 1, 2), dtype=jnp.float32) for window in windows])

    if chunk == n:
        return chunk_sums(x, grad).astype(grad.dtype)

    def accumulate(total, chunk_pair):
        return total + chunk_sums(*chunk_pair), None

    chunks = (x.reshape(n // chunk, chunk, *x.shape[1:]), grad.reshape(n // chunk, chunk, *grad.shape[1:]))
    total, _ = jax.lax.scan(accumulate, jnp.zeros((kh * kw, c), jnp.float32), chunks)
    return total.astype(grad.dtype)
