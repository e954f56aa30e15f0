"""The compute dtype chosen per accelerator."""

import types

import jax
import pytest

from megathread_jax import precision


@pytest.mark.parametrize(
    ("platform", "capability", "expected"),
    [
        ("gpu", "9.0", "bfloat16"),  # H100
        ("gpu", "8.6", "bfloat16"),  # RTX 30xx
        ("gpu", "7.5", "float16"),  # T4
        ("gpu", "7.0", "float16"),  # V100
        ("gpu", "6.1", "float32"),  # GTX 10xx: float16 runs at a fraction of float32's rate
        ("gpu", "gfx90a", "float32"),  # not a CUDA capability
        ("tpu", None, "bfloat16"),
        ("cpu", None, "float32"),
    ],
)
def test_dtype_per_accelerator(platform, capability, expected):
    device = types.SimpleNamespace(platform=platform)
    if capability is not None:
        device.compute_capability = capability
    assert precision.compute_dtype(device) == expected


def test_this_machine_cpu_gets_float32():
    assert jax.devices()[0].platform == "cpu"
    assert precision.compute_dtype() == "float32"
