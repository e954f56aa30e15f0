"""A train step on 8 simulated CPU devices equals the same step on 1 device."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np, optax
    from flax import nnx
    from megathread_jax import models, parallel, tasks
    from megathread_jax.train import TrainState, make_train_step
    assert jax.device_count() == 8, jax.devices()

    def one_step(devices):
        model = models.create("mobilevit_xxs", num_classes=10, seed=0)
        mesh = parallel.make_mesh(devices)
        tx = optax.sgd(0.05, momentum=0.9)  # Adam would amplify float noise in near-zero gradients
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        state = TrainState(step=np.int32(0), params=params, rest=rest, opt_state=tx.init(params))
        state = jax.device_put(state, parallel.replicated(mesh))
        rng = np.random.default_rng(0)
        batch = {"image": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
                 "label": rng.integers(0, 10, 16).astype(np.int32)}
        batch = parallel.shard_batch(mesh, batch)
        assert len(batch["image"].sharding.device_set) == len(devices)
        def loss(model, batch, key):
            logits = model(batch["image"].astype(np.float32) / 255.0)
            return tasks.classification_loss(logits, batch["label"], 0.1), {}

        step = jax.jit(make_train_step(graphdef, tx, loss, seed=0))
        for _ in range(2):
            state, metrics = step(state, batch)
        return float(metrics["loss"]), jax.device_get(state.params), jax.device_get(state.rest)

    loss8, params8, rest8 = one_step(jax.devices())
    loss1, params1, rest1 = one_step(jax.devices()[:1])
    assert abs(loss8 - loss1) < 1e-5, (loss8, loss1)
    for a, b in zip(jax.tree.leaves((params8, nnx.state(rest8, nnx.BatchStat))),
                    jax.tree.leaves((params1, nnx.state(rest1, nnx.BatchStat)))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    print("OK", loss8, loss1)
    """
)


def test_eight_devices_match_one():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("OK")
