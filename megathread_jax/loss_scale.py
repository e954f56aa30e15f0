"""Dynamic loss scaling for float16 compute.

float16's small range flushes small gradients to zero in the backward pass; multiplying the loss by
a large scale keeps them representable, and the gradients are divided by it again before the update.
The scale is kept as high as the gradients allow: a step whose gradients overflow is skipped and
halves the scale; `growth_interval` finite steps in a row double it (PyTorch's `GradScaler` rule).

flax's `DynamicScale` computes the gradients itself, one call per scale update, which does not fit
a step that accumulates gradients over microbatches inside a `lax.scan`; this state does only the
bookkeeping and lives in the train state, so it is checkpointed and a resumed run is exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class DynamicLossScale:
    scale: jax.Array  # float32 scalar the loss is multiplied by
    finite_steps: jax.Array  # int32: finite steps since the scale last changed
    growth_interval: int = struct.field(pytree_node=False, default=2000)
    factor: float = struct.field(pytree_node=False, default=2.0)
    minimum: float = struct.field(pytree_node=False, default=1.0)

    @classmethod
    def create(cls, initial: float = 2.0**16, **options: float) -> DynamicLossScale:
        return cls(scale=jnp.asarray(initial, jnp.float32), finite_steps=jnp.zeros((), jnp.int32), **options)

    def scale_loss(self, loss: jax.Array) -> jax.Array:
        return loss * self.scale

    def unscale(self, grads):
        return jax.tree.map(lambda g: g / self.scale.astype(g.dtype), grads)

    def adjust(self, grads_finite: jax.Array) -> DynamicLossScale:
        """The scale after a step whose gradients were (not) all finite."""
        grow = grads_finite & (self.finite_steps + 1 >= self.growth_interval)
        scale = jnp.where(
            grads_finite,
            jnp.where(grow, self.scale * self.factor, self.scale),
            jnp.maximum(self.scale / self.factor, self.minimum),
        )
        finite_steps = jnp.where(grads_finite & ~grow, self.finite_steps + 1, 0)
        return self.replace(scale=scale, finite_steps=finite_steps)
