"""The exponential moving average of the weights: its update in the jitted step, skipped updates
leaving it alone, and a run that validates it and keeps the better of the two as its final weights."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from megathread_jax import checkpoints, models
from megathread_jax.train import TrainState, make_train_step
from tests.test_main import TINY_DEMO, run_main


def _loss(model, batch, key):
    logits = model(batch["image"])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])), {}


def test_the_average_follows_each_applied_update_and_ignores_a_skipped_one():
    model = models.create("mobilevit_xxs", seed=0, num_classes=4)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.sgd(0.1)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
    )
    step = jax.jit(make_train_step(graphdef, tx, _loss, seed=0, skip_nonfinite=True, ema_decay=0.75))
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    batch = {"image": images, "label": np.arange(4, dtype=np.int32)}

    expected = jax.device_get(params)
    for _ in range(3):
        state, _ = step(state, batch)
        expected = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * p, expected, jax.device_get(state.params))
    for (path, a), (_, b) in zip(nnx.to_flat_state(expected), nnx.to_flat_state(state.ema_params), strict=True):
        np.testing.assert_allclose(np.asarray(b.value), np.asarray(a.value), rtol=1e-5, atol=1e-7, err_msg=str(path))
    assert not np.allclose(
        np.asarray(jax.tree.leaves(state.ema_params)[0]), np.asarray(jax.tree.leaves(state.params)[0])
    )  # it lags the weights

    before = jax.device_get(state.ema_params)
    state, metrics = step(state, {**batch, "image": np.full_like(images, np.nan)})
    assert float(metrics["skipped_updates"]) == 1.0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state.ema_params)), strict=True):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


def test_a_run_validates_the_average_and_says_which_weights_it_kept(tmp_path):
    result = run_main(
        "--config=configs/mobilevit.py:demo", *TINY_DEMO, "--config.ema_decay=0.5", f"--workdir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    raw = next(r for r in records if r["split"] == "val")
    averaged = next(r for r in records if r["split"] == "val_ema")
    kept = "ema" if averaged["top1"] > raw["top1"] else "raw"
    assert checkpoints.read_meta(tmp_path / "weights")["weights_from"] == kept
    chosen = "the moving average" if kept == "ema" else "the raw weights"
    assert f"final weights are {chosen}: validation top1" in result.stdout + result.stderr
    final = (raw, averaged)[kept == "ema"]
    assert f"top1={final['top1']:.4f}" in result.stdout  # the final validation reported is the kept weights'
