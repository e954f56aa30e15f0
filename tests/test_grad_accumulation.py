"""Gradient accumulation: N microbatches per step train as one batch of the same size."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from megathread_jax import models, tasks
from megathread_jax.train import TrainState, make_train_step


def _gpt2_loss(model, batch, key):
    losses, hits = tasks._next_token_losses_and_hits(model, batch["tokens"])
    return jnp.mean(losses), {"accuracy": jnp.mean(hits)}


def _train(grad_accum_steps: int, batches: np.ndarray) -> tuple[list[float], nnx.State]:
    # GPT-2 has no batch norm, and with dropout off a microbatch sees exactly what the batch did.
    model = models.create(
        "gpt2",
        seed=0,
        n_layer=2,
        n_head=2,
        n_embd=32,
        vocab_size=64,
        n_positions=16,
        embd_pdrop=0.0,
        resid_pdrop=0.0,
        attn_pdrop=0.0,
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # SGD: its update is linear in the gradient. Adam would blow up float noise in gradients that are
    # zero in exact arithmetic (attention's key bias) into updates of the learning rate's size.
    tx = optax.sgd(0.5, momentum=0.9)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params))
    step = jax.jit(make_train_step(graphdef, tx, _gpt2_loss, seed=0, grad_accum_steps=grad_accum_steps))
    losses = []
    for tokens in batches:
        state, metrics = step(state, {"tokens": tokens})
        losses.append(float(metrics["loss"]))
    return losses, state.params


def test_four_microbatches_equal_one_batch_in_losses_and_parameters():
    windows = np.random.default_rng(0).integers(0, 64, (8, 16)).astype(np.int32)
    batches = np.stack([windows] * 4)  # 4 steps on one batch of 8 windows, so the loss must fall
    one_losses, one_params = _train(1, batches)
    four_losses, four_params = _train(4, batches)
    np.testing.assert_allclose(four_losses, one_losses, rtol=1e-5)
    assert one_losses[-1] < one_losses[0]  # it trains
    for (path, a), (_, b) in zip(nnx.to_flat_state(one_params), nnx.to_flat_state(four_params), strict=True):
        np.testing.assert_allclose(np.asarray(b.value), np.asarray(a.value), rtol=1e-4, atol=1e-6, err_msg=str(path))


def test_a_batch_that_does_not_split_is_refused():
    from megathread_jax import config_base, config_fields
    from megathread_jax.errors import ConfigurationError

    config = config_base.load_config("configs/gpt2.py:demo", {"batch_size": 10, "grad_accum_steps": 4})
    with pytest.raises(ConfigurationError, match=r"config.batch_size=10 .* multiple of grad_accum_steps \(4\)"):
        config_fields.check(config)
