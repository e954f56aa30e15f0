"""The convolution formulations against PyTorch's conv2d: outputs, input and kernel gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from megathread_jax.models import convolution
from tests.conftest import nchw_to_nhwc

# (in, out, kernel, stride, groups, size): depthwise at both strides and odd/even sizes, full
# convolutions (im2col), pointwise.
CASES = [
    (6, 6, 3, 1, 6, 8),
    (6, 6, 3, 2, 6, 8),
    (6, 6, 3, 2, 6, 7),
    (6, 6, 5, 2, 6, 9),
    (4, 5, 3, 1, 1, 8),
    (3, 16, 3, 2, 1, 9),
    (4, 6, 1, 1, 1, 8),
    (4, 6, 1, 2, 1, 8),
]


def _torch_conv(x_nhwc: np.ndarray, kernel_hwio: np.ndarray, stride: int, groups: int, grad_nhwc: np.ndarray):
    x = torch.tensor(x_nhwc.transpose(0, 3, 1, 2), requires_grad=True)
    weight = torch.tensor(kernel_hwio.transpose(3, 2, 0, 1), requires_grad=True)
    y = torch.nn.functional.conv2d(x, weight, stride=stride, padding=(weight.shape[-1] - 1) // 2, groups=groups)
    y.backward(torch.tensor(grad_nhwc.transpose(0, 3, 1, 2)))
    return nchw_to_nhwc(y.detach()), nchw_to_nhwc(x.grad), weight.grad.permute(2, 3, 1, 0).numpy()


def _flax_conv(conv: convolution.Conv2d, x: np.ndarray, grad: np.ndarray):
    def pulled(conv, x):
        return jnp.sum(conv(x) * grad)

    (kernel_grad, x_grad) = nnx.grad(pulled, argnums=(0, 1))(conv, jnp.asarray(x))
    return np.asarray(conv(jnp.asarray(x))), np.asarray(x_grad), np.asarray(kernel_grad.kernel[...])


@pytest.mark.parametrize("impl", ["matmul", "lax"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "in{}-out{}-k{}-s{}-g{}-hw{}".format(*c))
def test_conv_matches_torch(case, impl):
    cin, cout, k, stride, groups, size = case
    conv = convolution.Conv2d(cin, cout, k, stride=stride, groups=groups, conv_impl=impl, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, size, size, cin)).astype(np.float32)
    out = (size + 2 * ((k - 1) // 2) - k) // stride + 1
    grad = rng.normal(size=(3, out, out, cout)).astype(np.float32)
    ours = _flax_conv(conv, x, grad)
    reference = _torch_conv(x, np.asarray(conv.kernel[...]), stride, groups, grad)
    for name, a, b in zip(("output", "input gradient", "kernel gradient"), ours, reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=name)


def test_depthwise_kernel_gradient_in_batch_chunks(monkeypatch):
    """A chunk budget of one example makes the kernel gradient a scan over the batch."""
    x = np.random.default_rng(2).normal(size=(4, 10, 10, 8)).astype(np.float32)
    grad = np.random.default_rng(3).normal(size=(4, 10, 10, 8)).astype(np.float32)
    conv = convolution.Conv2d(8, 8, 3, groups=8, conv_impl="matmul", rngs=nnx.Rngs(0))
    monkeypatch.setattr(convolution, "_KERNEL_GRAD_CHUNK_BYTES", 12 * 12 * 8 * 4)
    jaxpr = jax.make_jaxpr(nnx.grad(lambda c: jnp.sum(c(jnp.asarray(x)) * grad)))(conv)
    assert "scan" in str(jaxpr)
    ours = _flax_conv(conv, x, grad)
    reference = _torch_conv(x, np.asarray(conv.kernel[...]), 1, 8, grad)
    np.testing.assert_allclose(ours[2], reference[2], rtol=1e-4, atol=1e-4)


def test_unknown_conv_impl_is_refused():
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        convolution.Conv2d(4, 4, 3, conv_impl="winograd", rngs=nnx.Rngs(0))


def test_several_inputs_are_convolved_as_their_channel_concatenation():
    rng = np.random.default_rng(4)
    a, b = (rng.normal(size=(2, 6, 6, c)).astype(np.float32) for c in (3, 5))
    for impl in ("matmul", "lax"):
        conv = convolution.Conv2d(8, 4, 3, conv_impl=impl, rngs=nnx.Rngs(0))
        joined = np.asarray(conv(np.concatenate([a, b], axis=-1)))
        np.testing.assert_allclose(np.asarray(conv(a, b)), joined, rtol=1e-5, atol=1e-5, err_msg=impl)


def test_auto_picks_matmul_on_cpu():
    assert jax.default_backend() == "cpu"
    assert convolution.resolve_conv_impl("auto") == "matmul"
