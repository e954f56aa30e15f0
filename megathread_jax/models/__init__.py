"""Model registry: `create(name, seed=..., **kwargs)` builds a Flax NNX module by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import nnx

from megathread_jax.errors import ConfigurationError
from megathread_jax.models import gpt2, mobilenet_v2, mobilevit

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _mobilevit_factory(arch_name: str) -> Callable[..., nnx.Module]:
    def build(*, num_classes: int, rngs: nnx.Rngs, dtype: str = "float32", **kwargs: Any) -> nnx.Module:
        return mobilevit.MobileViT(mobilevit.ARCHS[arch_name], num_classes, dtype=_DTYPES[dtype], rngs=rngs, **kwargs)

    return build


def _mobilenet_v2(*, num_classes: int, rngs: nnx.Rngs, dtype: str = "float32", **kwargs: Any) -> nnx.Module:
    return mobilenet_v2.MobileNetV2(num_classes, dtype=_DTYPES[dtype], rngs=rngs, **kwargs)


def _gpt2_factory(size: str) -> Callable[..., nnx.Module]:
    def build(*, rngs: nnx.Rngs, **overrides: Any) -> nnx.Module:
        return gpt2.GPT2LMHeadModel(gpt2.make_config(size, **overrides), rngs=rngs)

    return build


_REGISTRY: dict[str, Callable[..., nnx.Module]] = {
    **{name: _mobilevit_factory(name) for name in mobilevit.ARCHS},
    "mobilenet_v2": _mobilenet_v2,
    **{name: _gpt2_factory(name) for name in gpt2.SIZES},
}
_NEEDS_NUM_CLASSES = (*mobilevit.ARCHS, "mobilenet_v2")


def weight_state(model: nnx.Module) -> nnx.State:
    """What a checkpoint of weights holds: parameters and batch-norm statistics (no RNG state)."""
    return nnx.state(model, (nnx.Param, nnx.BatchStat))


def names() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, *, seed: int = 0, **kwargs: Any) -> nnx.Module:
    """Builds model `name` with a fresh random initialisation from `seed`.

    Image models: `num_classes` (required), `dtype` ("float32", "bfloat16", "float16": compute
    dtype; parameters stay float32), `drop_rate`, `conv_impl` ("auto", "matmul", "lax");
    MobileNetV2 also `width_mult`. GPT-2 ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"): Hugging
    Face `GPT2Config` field names (`n_layer`, `n_head`, `n_embd`, `vocab_size`, ...) and the fields
    of `models.gpt2.GPT2Config` (`dtype`, `attention_impl`, `remat`).
    """
    if name not in _REGISTRY:
        raise ConfigurationError(f"unknown model {name!r}; known models: {', '.join(names())}")
    if name in _NEEDS_NUM_CLASSES and "num_classes" not in kwargs:
        raise ConfigurationError(f"model {name!r} needs num_classes")
    dtype = kwargs.get("dtype", "float32")
    if dtype not in _DTYPES:
        raise ConfigurationError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    return _REGISTRY[name](rngs=nnx.Rngs(params=seed, dropout=seed + 1), **kwargs)
