"""Optimizer: AdamW with linear warmup and cosine decay over the whole run."""

from __future__ import annotations

import jax
import optax

from megathread_jax.errors import ConfigurationError


def decay_mask(params):
    """Weight decay on kernels only: norms' scales and all biases (1-D leaves) are left alone."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def learning_rate_schedule(optim_config, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
    warmup = min(int(optim_config.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim_config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=optim_config.learning_rate * optim_config.final_lr_fraction,
    )


def make_optimizer(optim_config, schedule: optax.Schedule) -> optax.GradientTransformation:
    if optim_config.name == "adamw":
        opt = optax.adamw(
            schedule,
            b1=optim_config.b1,
            b2=optim_config.b2,
            weight_decay=optim_config.weight_decay,
            mask=decay_mask,
        )
    elif optim_config.name == "sgd":
        opt = optax.sgd(schedule, momentum=optim_config.momentum or None)
    else:
        raise ConfigurationError(f"unknown optimizer {optim_config.name!r}; choose 'adamw' or 'sgd'")
    if optim_config.grad_clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(optim_config.grad_clip_norm), opt)
    return opt
