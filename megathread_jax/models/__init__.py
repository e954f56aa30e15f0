"""Model registry: `create(name, num_classes=..., seed=...)` builds a Flax NNX module by name."""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
from flax import nnx

from megathread_jax.models import mobilenet_v2, mobilevit

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _mobilevit_factory(arch_name: str) -> Callable[..., nnx.Module]:
    def build(*, num_classes: int, rngs: nnx.Rngs, dtype: str = "float32", **kwargs: Any) -> nnx.Module:
        return mobilevit.MobileViT(
            mobilevit.ARCHS[arch_name], num_classes, dtype=_DTYPES[dtype], rngs=rngs, **kwargs
        )

    return build


def _mobilenet_v2(*, num_classes: int, rngs: nnx.Rngs, dtype: str = "float32", **kwargs: Any) -> nnx.Module:
    return mobilenet_v2.MobileNetV2(num_classes, dtype=_DTYPES[dtype], rngs=rngs, **kwargs)


_REGISTRY: dict[str, Callable[..., nnx.Module]] = {
    **{name: _mobilevit_factory(name) for name in mobilevit.ARCHS},
    "mobilenet_v2": _mobilenet_v2,
}


def weight_state(model: nnx.Module) -> nnx.State:
    """What a checkpoint of weights holds: parameters and batch-norm statistics (no RNG state)."""
    return nnx.state(model, (nnx.Param, nnx.BatchStat))


def names() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, *, num_classes: int, seed: int = 0, **kwargs: Any) -> nnx.Module:
    """Builds model `name` with a fresh random initialisation from `seed`.

    kwargs: `dtype` ("float32", "bfloat16", "float16": compute dtype; parameters stay float32),
    `drop_rate`, `depthwise_impl` ("auto", "shifted", "lax"); MobileNetV2 also `width_mult`.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    dtype = kwargs.get("dtype", "float32")
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    return _REGISTRY[name](num_classes=num_classes, rngs=nnx.Rngs(params=seed, dropout=seed + 1), **kwargs)
