"""Flax MobileNetV2 against torchvision's and timm's, with random weights."""

import numpy as np
import pytest
import timm
import torch
import torchvision

from megathread_jax import convert
from tests.conftest import nchw_to_nhwc, randomise_batchnorm, run_flax

ATOL = 1e-4
# Both convolution formulations: "matmul" is the CPU default, "lax" (cuDNN) the GPU default.
CONV_FORMULATIONS = ["matmul", "lax"]


@pytest.fixture(scope="module")
def torchvision_model():
    return randomise_batchnorm(torchvision.models.mobilenet_v2(num_classes=1000)).eval()


@pytest.mark.parametrize("conv_impl", CONV_FORMULATIONS)
@pytest.mark.parametrize("resolution", [32, 224])
def test_eval_logits_match_torchvision(torchvision_model, resolution, conv_impl):
    model = convert.from_torch(
        "mobilenet_v2", torchvision_model.state_dict(), source="torchvision", conv_impl=conv_impl
    )
    model.eval()
    x = torch.rand(2, 3, resolution, resolution)
    with torch.no_grad():
        expected = torchvision_model(x).numpy()
    np.testing.assert_allclose(run_flax(model, nchw_to_nhwc(x)), expected, atol=ATOL, rtol=0)


def test_eval_logits_match_timm():
    reference = randomise_batchnorm(timm.create_model("mobilenetv2_100", num_classes=10), seed=3).eval()
    model = convert.from_torch("mobilenet_v2", reference.state_dict(), source="timm")
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x).numpy()
    np.testing.assert_allclose(run_flax(model, nchw_to_nhwc(x)), expected, atol=ATOL, rtol=0)
    back = convert.to_torch("mobilenet_v2", model, target="timm")
    for key, value in reference.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(back[key], value), key


@pytest.mark.parametrize("conv_impl", CONV_FORMULATIONS)
def test_train_mode_matches_torchvision(conv_impl):
    reference = randomise_batchnorm(torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5), seed=4)
    model = convert.from_torch(
        "mobilenet_v2", reference.state_dict(), source="torchvision", width_mult=0.5, conv_impl=conv_impl
    )
    reference.train()
    model.train()
    torch.manual_seed(0)
    reference.classifier[0].p = 0.0  # dropout masks differ between frameworks
    model.classifier[0].rate = 0.0
    # 64 px leaves a 2x2 map at the end: batch statistics over 8 images * 4 positions are well
    # conditioned (at 32 px, 4 values per channel amplify float32 rounding past 1e-4).
    x = torch.rand(8, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x).numpy()
    np.testing.assert_allclose(run_flax(model, nchw_to_nhwc(x)), expected, atol=ATOL, rtol=0)
    exported = convert.to_torch("mobilenet_v2", model, target="torchvision")
    for key, value in reference.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(exported[key].numpy(), value.numpy(), atol=1e-5, rtol=1e-5, err_msg=key)


def test_round_trip_to_torchvision_is_exact(torchvision_model):
    state_dict = torchvision_model.state_dict()
    back = convert.to_torch(
        "mobilenet_v2", convert.from_torch("mobilenet_v2", state_dict, source="torchvision"), target="torchvision"
    )
    weights = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    assert back.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(back[key], value), key
