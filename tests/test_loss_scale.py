"""float16 training with dynamic loss scaling: the scale's rule, an overflow skipped in the jitted step,
a float16 model that learns, and an exact resume of the scale from a checkpoint."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from megathread_jax import checkpoints, models, tasks
from megathread_jax.loss_scale import DynamicLossScale
from megathread_jax.train import TrainState, make_train_step


def test_the_scale_halves_on_overflow_grows_after_a_run_of_finite_steps_and_stays_above_its_minimum():
    scale = DynamicLossScale.create(8.0, growth_interval=3, minimum=2.0)
    finite, overflow = jnp.array(True), jnp.array(False)
    scale = scale.adjust(finite).adjust(finite)
    assert (float(scale.scale), int(scale.finite_steps)) == (8.0, 2)
    scale = scale.adjust(finite)  # the third finite step in a row doubles it and restarts the count
    assert (float(scale.scale), int(scale.finite_steps)) == (16.0, 0)
    scale = scale.adjust(finite).adjust(overflow)  # an overflow halves it and restarts the count
    assert (float(scale.scale), int(scale.finite_steps)) == (8.0, 0)
    for _ in range(4):
        scale = scale.adjust(overflow)
    assert float(scale.scale) == 2.0
    grads = {"w": jnp.array([64.0, -8.0])}
    np.testing.assert_array_equal(scale.unscale(grads)["w"], [32.0, -4.0])


def _loss(model, batch, key):
    # `amplify` (one value repeated per example) multiplies the loss: a large value overflows float16
    # in the backward pass.
    losses, hits = tasks._next_token_losses_and_hits(model, batch["tokens"])
    return jnp.mean(losses) * batch["amplify"][0], {"accuracy": jnp.mean(hits)}


def _float16_gpt2_state(tx, *, ema: bool = False):
    model = models.create(
        "gpt2", seed=0, n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16, dtype="float16"
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        loss_scale=DynamicLossScale.create(),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
    )
    return graphdef, state


def _batch(amplify: float = 1.0) -> dict[str, np.ndarray]:
    tokens = np.random.default_rng(0).integers(0, 64, (8, 16)).astype(np.int32)
    return {"tokens": tokens, "amplify": np.full(len(tokens), amplify, np.float32)}  # per example: batches split


def test_an_overflow_is_skipped_and_halves_the_scale_then_training_goes_on():
    tx = optax.adamw(1e-2)
    graphdef, state = _float16_gpt2_state(tx)
    step = jax.jit(make_train_step(graphdef, tx, _loss, seed=0))
    state, metrics = step(state, _batch())
    assert float(metrics["skipped_updates"]) == 0.0 and float(state.loss_scale.scale) == 2.0**16
    before = jax.device_get(state)

    # The scaled loss stays finite in float32, but its gradients overflow float16's activations.
    state, metrics = step(state, _batch(amplify=1e30))
    assert float(metrics["skipped_updates"]) == 1.0
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) == 0.0
    assert float(state.loss_scale.scale) == 2.0**15 and int(state.step) == 2
    for old, new in zip(
        jax.tree.leaves((before.params, before.opt_state)),
        jax.tree.leaves((state.params, state.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))  # the update was not applied

    state, metrics = step(state, _batch())
    assert float(metrics["skipped_updates"]) == 0.0 and float(metrics["grad_norm"]) > 0
    assert int(state.loss_scale.finite_steps) == 1
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(jax.device_get(state.params)), strict=True)
    ]
    assert any(changed)


def test_a_float16_model_learns_with_a_scaled_loss():
    tx = optax.adamw(1e-2)
    graphdef, state = _float16_gpt2_state(tx)
    step = jax.jit(make_train_step(graphdef, tx, _loss, seed=0))
    losses = []
    for _ in range(30):
        state, metrics = step(state, _batch())
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses


def _leaves(state: TrainState) -> list[np.ndarray]:
    keys_as_data = jax.tree.map(
        lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, state
    )
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(keys_as_data))]


def test_the_scale_and_the_weights_average_are_checkpointed_and_a_resumed_run_is_exact(tmp_path):
    tx = optax.adamw(1e-2)
    graphdef, start = _float16_gpt2_state(tx, ema=True)
    step = jax.jit(make_train_step(graphdef, tx, _loss, seed=0, grad_accum_steps=2, ema_decay=0.9))
    batches = [_batch(amplify=1e30 if i == 1 else 1.0) for i in range(6)]  # one overflow in the first half

    state = start
    for batch in batches:
        state, _ = step(state, batch)
    straight = _leaves(state)

    state = start
    for batch in batches[:3]:
        state, _ = step(state, batch)
    store = checkpoints.CheckpointStore(tmp_path, keep=1, best_metric="loss", best_mode="min")
    store.save(3, state)
    store.close()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), start)
    store = checkpoints.CheckpointStore(tmp_path, keep=1, best_metric="loss", best_mode="min")
    state = store.restore_latest(abstract)
    store.close()
    assert float(state.loss_scale.scale) == 2.0**15
    for batch in batches[3:]:
        state, _ = step(state, batch)
    for a, b in zip(straight, _leaves(state), strict=True):
        np.testing.assert_array_equal(b, a)  # bit-identical


def test_a_float16_run_with_microbatches_logs_its_scale_and_saves_finite_weights(tmp_path):
    from tests.conftest import flat_weights
    from tests.test_main import TINY_DEMO, run_main

    result = run_main(
        "--config=configs/mobilevit.py:demo",
        *TINY_DEMO,
        "--config.model.dtype=float16",
        "--config.grad_accum_steps=2",
        f"--workdir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train and all(r["loss_scale"] >= 1.0 and "skipped_updates" in r for r in train)
    assert all(np.isfinite(v).all() for v in flat_weights(tmp_path / "weights").values())
