"""Freezing rules: linear probing keeps the backbone bit-identical, gradual unfreezing follows
its schedule, learning-rate multipliers scale updates."""

import jax
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from megathread_jax import freezing, models
from megathread_jax.errors import UserError
from megathread_jax.train import TrainState, make_train_step, phased_train_steps
from tests.conftest import classification_loss_fn

STEPS_PER_EPOCH = 2


def _config(freeze="", unfreeze="", lr_multipliers=""):
    return ml_collections.ConfigDict(dict(freeze=freeze, unfreeze=unfreeze, lr_multipliers=lr_multipliers))


def _flat(state) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.array(v.get_value()) for p, v in nnx.to_flat_state(state)}


def _run(config, num_steps):
    """Trains a small MobileNetV2 and returns the flat (params + batch stats) after every step."""
    model = models.create("mobilenet_v2", num_classes=10, width_mult=0.35)
    plan = freezing.FreezePlan.from_config(config)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    plan.check_matches(params)
    tx = freezing.partitioned_optimizer(
        plan, params, optax.constant_schedule(0.05), STEPS_PER_EPOCH, lambda s: optax.sgd(s, momentum=0.9)
    )
    state = TrainState(step=np.int32(0), params=params, rest=rest, opt_state=tx.init(params))
    step_for = phased_train_steps(
        model, plan, STEPS_PER_EPOCH, lambda g: make_train_step(g, tx, classification_loss_fn(), seed=0)
    )
    rng = np.random.default_rng(0)
    history = [{**_flat(state.params), **_flat(nnx.state(state.rest, nnx.BatchStat))}]
    for step in range(num_steps):
        batch = {"image": rng.random((8, 32, 32, 3), np.float32), "label": rng.integers(0, 10, 8).astype(np.int32)}
        state, _ = step_for(step)(state, batch)
        history.append(
            {**_flat(jax.device_get(state.params)), **_flat(nnx.state(jax.device_get(state.rest), nnx.BatchStat))}
        )
    return history


def _changed(before, after, prefix):
    keys = [k for k in before if k.startswith(prefix)]
    assert keys, prefix
    return {k: not np.array_equal(before[k], after[k]) for k in keys}


def test_linear_probe_keeps_backbone_bit_identical():
    history = _run(_config(freeze="features"), 3)
    start, end = history[0], history[-1]
    assert not any(_changed(start, end, "features.").values())  # params and running statistics
    assert all(_changed(start, end, "classifier.1.").values())


def test_gradual_unfreezing_follows_the_schedule():
    history = _run(_config(unfreeze="features.[14-18]@1,features.[0-13]@2"), 3 * STEPS_PER_EPOCH)
    epoch_end = [history[e * STEPS_PER_EPOCH] for e in range(4)]
    # epoch 0: head only
    assert not any(_changed(epoch_end[0], epoch_end[1], "features.").values())
    assert all(_changed(epoch_end[0], epoch_end[1], "classifier.1.").values())
    # epoch 1: head and the top blocks
    assert all(_changed(epoch_end[1], epoch_end[2], "features.17.conv.0.0.kernel").values())
    assert all(_changed(epoch_end[1], epoch_end[2], "features.14.conv.0.1.mean").values())
    assert not any(_changed(epoch_end[1], epoch_end[2], "features.13.").values())
    assert not any(_changed(epoch_end[1], epoch_end[2], "features.0.").values())
    # epoch 2: everything
    assert all(_changed(epoch_end[2], epoch_end[3], "features.0.0.kernel").values())
    assert all(_changed(epoch_end[2], epoch_end[3], "features.0.1.var").values())


def test_lr_multiplier_zero_freezes_and_counts():
    model = models.create("mobilenet_v2", num_classes=10, width_mult=0.35)
    params = nnx.state(model, nnx.Param)
    plan = freezing.FreezePlan.from_config(_config(lr_multipliers="features=0.1", unfreeze="features.[0-6]@3"))
    total = sum(x.size for x in jax.tree.leaves(params))
    head = 10 * 1280 + 10
    trainable, frozen = freezing.count_parameters(plan, params, epoch=0)
    assert trainable + frozen == total and 0 < frozen < total - head
    assert freezing.count_parameters(plan, params, epoch=3) == (total, 0)
    labels, groups = freezing.label_params(plan, params)
    assert {g.lr_multiplier for g in groups.values()} == {0.1, 1.0}


def test_patterns_with_ranges_match_whole_components():
    pattern = freezing.compile_pattern("features.[0-13]")
    assert pattern.match("features.13.conv.0.0.kernel") and pattern.match("features.0")
    assert not pattern.match("features.14.conv") and not pattern.match("features.130")


def test_a_pattern_that_matches_nothing_is_an_error():
    params = nnx.state(models.create("mobilenet_v2", num_classes=10, width_mult=0.35), nnx.Param)
    with pytest.raises(UserError, match="featurs"):
        freezing.FreezePlan.from_config(_config(freeze="featurs")).check_matches(params)
    with pytest.raises(UserError, match="PATTERN@NUMBER"):
        freezing.FreezePlan.from_config(_config(unfreeze="features"))
