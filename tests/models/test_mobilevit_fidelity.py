"""Flax MobileViT against the real references (timm, Hugging Face) with random weights."""

import numpy as np
import optax
import pytest
import timm
import torch
from flax import nnx

from megathread_jax import convert
from megathread_jax.train import TrainState, make_train_step
from tests.conftest import classification_loss_fn, nchw_to_nhwc, randomise_batchnorm, run_flax

ATOL = 1e-4
# Both convolution formulations: "matmul" is the CPU default, "lax" (cuDNN) the GPU default.
CONV_FORMULATIONS = ["matmul", "lax"]


@pytest.fixture(scope="module")
def timm_xxs():
    return randomise_batchnorm(timm.create_model("mobilevit_xxs", num_classes=1000)).eval()


@pytest.mark.parametrize("conv_impl", CONV_FORMULATIONS)
@pytest.mark.parametrize("resolution", [64, 96, 256])
def test_eval_logits_match_timm(timm_xxs, resolution, conv_impl):
    model = convert.from_torch("mobilevit_xxs", timm_xxs.state_dict(), source="timm", conv_impl=conv_impl)
    model.eval()
    x = torch.rand(2, 3, resolution, resolution)
    with torch.no_grad():
        expected = timm_xxs(x).numpy()
    got = run_flax(model, nchw_to_nhwc(x))
    assert got.shape == (2, 1000)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("conv_impl", CONV_FORMULATIONS)
def test_train_mode_logits_and_running_stats_match_timm(conv_impl):
    reference = randomise_batchnorm(timm.create_model("mobilevit_xxs", num_classes=10), seed=1)
    model = convert.from_torch("mobilevit_xxs", reference.state_dict(), source="timm", conv_impl=conv_impl)
    reference.train()
    model.train()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x).numpy()
    got = run_flax(model, nchw_to_nhwc(x))
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    # Running statistics after the step: PyTorch updates them with the unbiased variance.
    exported = convert.to_torch("mobilevit_xxs", model, target="timm")
    for key, value in reference.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(exported[key].numpy(), value.numpy(), atol=1e-5, rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s"])
def test_round_trip_to_torch_is_exact(name):
    reference = randomise_batchnorm(timm.create_model(name, num_classes=7))
    state_dict = reference.state_dict()
    back = convert.to_torch(name, convert.from_torch(name, state_dict, source="timm"), target="timm")
    weights = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    assert back.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(back[key], value), key
    reference.load_state_dict(back, strict=True)  # PyTorch fills in num_batches_tracked


def test_hugging_face_xx_small_matches():
    from transformers import MobileViTConfig, MobileViTForImageClassification

    config = MobileViTConfig(
        neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], hidden_sizes=[64, 80, 96], expand_ratio=2.0, num_labels=10
    )
    reference = randomise_batchnorm(MobileViTForImageClassification(config)).eval()
    model = convert.from_torch("mobilevit_xxs", reference.state_dict(), source="hf")
    model.eval()
    for resolution in (64, 96):
        x = torch.rand(2, 3, resolution, resolution)
        with torch.no_grad():
            expected = reference(pixel_values=x).logits.numpy()
        np.testing.assert_allclose(run_flax(model, nchw_to_nhwc(x)), expected, atol=ATOL, rtol=0)


def test_one_sgd_step_matches_timm():
    reference = randomise_batchnorm(timm.create_model("mobilevit_xxs", num_classes=10), seed=2).train()
    model = convert.from_torch("mobilevit_xxs", reference.state_dict(), source="timm")
    model.train()
    x = torch.rand(8, 3, 64, 64)
    labels = torch.arange(8) % 10
    lr = 0.5

    optimizer = torch.optim.SGD(reference.parameters(), lr=lr)
    loss = torch.nn.functional.cross_entropy(reference(x), labels)
    loss.backward()
    optimizer.step()

    tx = optax.sgd(lr)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = TrainState(step=np.int32(0), params=params, rest=rest, opt_state=tx.init(params))
    step = make_train_step(graphdef, tx, classification_loss_fn(), seed=0)
    import jax

    state, metrics = jax.jit(step)(state, {"image": nchw_to_nhwc(x), "label": labels.numpy()})
    np.testing.assert_allclose(float(metrics["loss"]), loss.item(), rtol=1e-5)
    nnx.update(model, state.params, state.rest)
    updated = convert.to_torch("mobilevit_xxs", model, target="timm")
    changed = 0
    for key, value in reference.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        np.testing.assert_allclose(updated[key].numpy(), value.numpy(), rtol=1e-4, atol=1e-5, err_msg=key)
        changed += key.endswith("weight")
    assert changed > 100
