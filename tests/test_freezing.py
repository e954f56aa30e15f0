"""Freezing rules: linear probing keeps the backbone bit-identical, gradual unfreezing follows
its schedule, learning-rate multipliers scale updates."""

import jax
import ml_collections
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from megathread_jax import freezing, models
from megathread_jax.errors import UserError
from megathread_jax.optim import make_optimizer
from megathread_jax.train import TrainState, make_train_step, phased_train_steps
from tests.conftest import classification_loss_fn

STEPS_PER_EPOCH = 2


def _config(freeze="", unfreeze="", lr_multipliers=""):
    return ml_collections.ConfigDict(dict(freeze=freeze, unfreeze=unfreeze, lr_multipliers=lr_multipliers))


def _flat(state) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.array(v.get_value()) for p, v in nnx.to_flat_state(state)}


def _run(config, num_steps, grad_norms=None):
    """Trains a small MobileNetV2 and returns the flat (params + batch stats) after every step;
    each step's gradient norm goes to `grad_norms` when given."""
    model = models.create("mobilenet_v2", num_classes=10, width_mult=0.35)
    plan = freezing.FreezePlan.from_config(config)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    plan.check_matches(params)
    tx = freezing.partitioned_optimizer(
        plan, params, optax.constant_schedule(0.05), STEPS_PER_EPOCH, lambda s: optax.sgd(s, momentum=0.9)
    )
    state = TrainState(step=np.int32(0), params=params, rest=rest, opt_state=tx.init(params))
    step_for = phased_train_steps(
        model,
        plan,
        STEPS_PER_EPOCH,
        lambda g, d: make_train_step(g, tx, classification_loss_fn(), seed=0, differentiate=d),
    )
    rng = np.random.default_rng(0)
    history = [{**_flat(state.params), **_flat(nnx.state(state.rest, nnx.BatchStat))}]
    for step in range(num_steps):
        batch = {"image": rng.random((8, 32, 32, 3), np.float32), "label": rng.integers(0, 10, 8).astype(np.int32)}
        state, metrics = step_for(step)(state, batch)
        if grad_norms is not None:
            grad_norms.append(float(metrics["grad_norm"]))
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


def test_blocks_not_unfrozen_yet_get_no_gradient():
    probe, gradual = [], []
    _run(_config(freeze="features"), 1, probe)
    _run(_config(unfreeze="features@1"), 2 * STEPS_PER_EPOCH, gradual)
    # Epoch 0 of gradual unfreezing differentiates the head alone, as the linear probe does (same
    # weights, same batch at step 0); from epoch 1 the backbone's gradients count too.
    np.testing.assert_allclose(gradual[0], probe[0], rtol=1e-6)
    assert gradual[STEPS_PER_EPOCH] > 2 * gradual[STEPS_PER_EPOCH - 1]


def test_a_group_unfrozen_later_starts_its_adamw_state_then_as_pytorch_does():
    """Against torch.optim.AdamW, where a parameter without gradients (requires_grad off until
    its epoch) gets no decay and no state until its first gradient: the same parameters after
    every step, the gradients sent before the unfreezing ignored."""
    rng = np.random.default_rng(0)
    start = {"head": {"kernel": rng.normal(size=(4, 3))}, "features": {"kernel": rng.normal(size=(5, 4))}}
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape), start) for _ in range(6)]
    optim = ml_collections.ConfigDict(dict(name="adamw", b1=0.9, b2=0.99, weight_decay=0.1, grad_clip_norm=0.0))
    plan = freezing.FreezePlan.from_config(_config(unfreeze="features@1"))
    tx = freezing.partitioned_optimizer(
        plan, start, optax.constant_schedule(0.01), STEPS_PER_EPOCH, lambda s: make_optimizer(optim, s)
    )
    params = jax.tree.map(lambda p: jax.numpy.asarray(p, np.float32), start)
    opt_state = tx.init(params)

    reference = {name: torch.tensor(p["kernel"], dtype=torch.float32) for name, p in start.items()}
    torch_adamw = torch.optim.AdamW(reference.values(), lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)
    for step, grad in enumerate(grads):
        updates, opt_state = tx.update(
            jax.tree.map(lambda g: jax.numpy.asarray(g, np.float32), grad), opt_state, params
        )
        params = optax.apply_updates(params, updates)
        for name, tensor in reference.items():
            released = name == "head" or step >= STEPS_PER_EPOCH
            tensor.grad = torch.tensor(grad[name]["kernel"], dtype=torch.float32) if released else None
        torch_adamw.step()
        for name, tensor in reference.items():
            np.testing.assert_allclose(params[name]["kernel"], tensor.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
        if step < STEPS_PER_EPOCH:  # not a bit moved before the unfreezing
            np.testing.assert_array_equal(params["features"]["kernel"], np.float32(start["features"]["kernel"]))


def test_a_group_starts_at_the_step_its_phase_does():
    # phased_train_steps changes phase at the first step whose step / steps_per_epoch reaches the
    # epoch; the optimizer must start the group there too, fractional epochs included.
    for steps_per_epoch in range(1, 31):
        for epoch in (0.1, 0.5, 1, 1.5, 2.3, 2 / 3):
            step = freezing.first_step_of_epoch(epoch, steps_per_epoch)
            assert step / steps_per_epoch >= epoch > (step - 1) / steps_per_epoch, (epoch, steps_per_epoch)


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
