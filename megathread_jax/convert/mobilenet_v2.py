"""MobileNetV2 weight sources: torchvision (names identical to ours) and timm `mobilenetv2_100`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from megathread_jax.convert.tree import WeightMismatchError, numpy_state_dict, to_numpy
from megathread_jax.models.mobilenet_v2 import INVERTED_RESIDUAL_SETTING

TIMM_NAME = "mobilenetv2_100"

# timm's blocks.{stage}.{block} -> torchvision's features.{k}
_FIRST_FEATURE_OF_STAGE = np.cumsum([1] + [n for _, _, n, _ in INVERTED_RESIDUAL_SETTING]).tolist()
_LAST_FEATURE = _FIRST_FEATURE_OF_STAGE[-1]

_TIMM_TOP_LEVEL = (
    (r"^conv_stem\.", "features.0.0."),
    (r"^bn1\.", "features.0.1."),
    (r"^conv_head\.", f"features.{_LAST_FEATURE}.0."),
    (r"^bn2\.", f"features.{_LAST_FEATURE}.1."),
    (r"^classifier\.", "classifier.1."),
)
# Inside a block: the first stage has no expansion conv.
_TIMM_FIRST_BLOCK = {"conv_dw": "conv.0.0", "bn1": "conv.0.1", "conv_pw": "conv.1", "bn2": "conv.2"}
_TIMM_BLOCK = {
    "conv_pw": "conv.0.0",
    "bn1": "conv.0.1",
    "conv_dw": "conv.1.0",
    "bn2": "conv.1.1",
    "conv_pwl": "conv.2",
    "bn3": "conv.3",
}


def _timm_key_to_torchvision(key: str) -> str:
    for pattern, replacement in _TIMM_TOP_LEVEL:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    match = re.match(r"^blocks\.(\d+)\.(\d+)\.(\w+)\.(.+)$", key)
    if not match:
        return key  # left for the strict loader to report as unexpected
    stage, block, layer, leaf = int(match[1]), int(match[2]), match[3], match[4]
    names = _TIMM_FIRST_BLOCK if stage == 0 else _TIMM_BLOCK
    if stage >= len(INVERTED_RESIDUAL_SETTING) or layer not in names:
        return key
    return f"features.{_FIRST_FEATURE_OF_STAGE[stage] + block}.{names[layer]}.{leaf}"


def timm_to_torchvision(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {_timm_key_to_torchvision(k): to_numpy(v) for k, v in state_dict.items()}


def _torchvision_to_timm_modules() -> dict[str, str]:
    names = {
        "features.0.0": "conv_stem",
        "features.0.1": "bn1",
        f"features.{_LAST_FEATURE}.0": "conv_head",
        f"features.{_LAST_FEATURE}.1": "bn2",
        "classifier.1": "classifier",
    }
    for stage, (_, _, repeats, _) in enumerate(INVERTED_RESIDUAL_SETTING):
        layers = _TIMM_FIRST_BLOCK if stage == 0 else _TIMM_BLOCK
        for block in range(repeats):
            for timm_layer, tv_layer in layers.items():
                names[f"features.{_FIRST_FEATURE_OF_STAGE[stage] + block}.{tv_layer}"] = (
                    f"blocks.{stage}.{block}.{timm_layer}"
                )
    return names


_TORCHVISION_TO_TIMM = _torchvision_to_timm_modules()


def torchvision_to_timm(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state_dict.items():
        module, leaf = key.rsplit(".", 1)
        if module not in _TORCHVISION_TO_TIMM:
            raise WeightMismatchError(f"no timm name for {key}")
        out[f"{_TORCHVISION_TO_TIMM[module]}.{leaf}"] = value
    return out


SOURCES = {"torchvision": numpy_state_dict, "timm": timm_to_torchvision}
# How the ImageNet weights see an image: torchvision's 224 px with ImageNet's mean and std.
IMAGENET_PREPROCESS = {
    "image_size": 224,
    "resolution": 224,
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}
TARGETS = {"torchvision": lambda sd: sd, "timm": torchvision_to_timm}


def model_kwargs_of(tree_state_dict: Mapping[str, np.ndarray], given: Mapping[str, Any]) -> dict[str, Any]:
    if "classifier.1.weight" not in tree_state_dict:
        raise WeightMismatchError("no classifier weight 'classifier.1.weight' (timm: 'classifier.weight')")
    return {"num_classes": int(tree_state_dict["classifier.1.weight"].shape[0])}


def fetch(name: str, source: str, tag: str | None = None) -> dict[str, Any]:
    """Downloads published ImageNet weights: torchvision's `tag` (IMAGENET1K_V1, default
    IMAGENET1K_V2) or timm's (`tag` a timm pretrained tag, default timm's own)."""
    if source == "timm":
        import timm

        return timm.create_model(f"{TIMM_NAME}.{tag}" if tag else TIMM_NAME, pretrained=True).state_dict()
    import torchvision

    weights = torchvision.models.MobileNet_V2_Weights[tag or "IMAGENET1K_V2"]
    return torchvision.models.mobilenet_v2(weights=weights).state_dict()
