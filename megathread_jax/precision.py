"""The compute dtype that suits an accelerator, for `--config.model.dtype` and the notebooks."""

from __future__ import annotations

import jax

# The first NVIDIA generation with bfloat16 tensor cores (Ampere); 7.x (V100, T4) has float16 ones.
_BFLOAT16_CAPABILITY = 8.0
_FLOAT16_CAPABILITY = 7.0


def compute_dtype(device: jax.Device | None = None) -> str:
    """`bfloat16` on TPUs and on GPUs of compute capability 8.0 or newer (A100, L4, RTX 30xx/40xx,
    H100), `float16` on 7.x (V100, T4), `float32` on CPUs, older GPUs and GPUs that do not report a
    CUDA compute capability. `device` defaults to JAX's first device."""
    device = device or jax.devices()[0]
    if device.platform == "tpu":
        return "bfloat16"
    if device.platform != "gpu":
        return "float32"
    try:
        capability = float(getattr(device, "compute_capability", ""))
    except ValueError:
        return "float32"
    if capability >= _BFLOAT16_CAPABILITY:
        return "bfloat16"
    return "float16" if capability >= _FLOAT16_CAPABILITY else "float32"
