"""MobileViT weight sources: timm (names identical to ours) and Hugging Face (renamed, q|k|v fused).

Hugging Face's `apple/mobilevit-*` image processor feeds BGR images; its converted weights keep
that convention (the timm weights take RGB).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from megathread_jax import hub
from megathread_jax.convert.tree import WeightMismatchError, numpy_state_dict, to_numpy

TIMM_IDS = {name: name for name in ("mobilevit_xxs", "mobilevit_xs", "mobilevit_s")}
HF_IDS = {
    "mobilevit_xxs": "apple/mobilevit-xx-small",
    "mobilevit_xs": "apple/mobilevit-x-small",
    "mobilevit_s": "apple/mobilevit-small",
}

# Hugging Face key (without the `mobilevit.` prefix) -> timm key, applied in order.
_HF_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^conv_stem\.", "stem."),
    (r"^conv_1x1_exp\.", "final_conv."),
    (r"^classifier\.", "head.fc."),
    (r"^encoder\.layer\.(\d+)\.layer\.(\d+)\.", r"stages.\1.\2."),
    (r"^encoder\.layer\.(\d+)\.downsampling_layer\.", r"stages.\1.0."),
    (r"^encoder\.layer\.(\d+)\.transformer\.layer\.(\d+)\.", r"stages.\1.1.transformer.\2."),
    (r"^encoder\.layer\.(\d+)\.", r"stages.\1.1."),
    (r"\.expand_1x1\.", ".conv1_1x1."),
    (r"\.conv_3x3\.", ".conv2_kxk."),
    (r"\.reduce_1x1\.", ".conv3_1x1."),
    (r"\.conv_1x1\.convolution\.", ".conv_1x1."),
    (r"\.conv_projection\.", ".conv_proj."),
    (r"\.fusion\.", ".conv_fusion."),
    (r"\.layernorm\.", ".norm."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"\.attention\.attention\.(query|key|value)\.", r".attn.\1."),
    (r"\.convolution\.", ".conv."),
    (r"\.normalization\.", ".bn."),
)
_QKV = ("query", "key", "value")


def _timm_name(hf_key: str) -> str:
    """The timm name of a Hugging Face key; attention keys keep their `query|key|value` part."""
    name = hf_key.removeprefix("mobilevit.")
    for pattern, replacement in _HF_RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


_SPLIT_ATTENTION = re.compile(r"^(.*\.attn)\.(query|key|value)\.(weight|bias)$")


def hf_to_timm(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Renames a `MobileViTForImageClassification` state_dict to timm's names, fusing q|k|v."""
    renamed = {_timm_name(key): to_numpy(value) for key, value in state_dict.items()}
    fused: dict[str, np.ndarray] = {}
    for name, value in renamed.items():
        match = _SPLIT_ATTENTION.match(name)
        if not match:
            fused[name] = value
            continue
        prefix, part, leaf = match.groups()
        if part != "query":
            continue
        parts = [f"{prefix}.{p}.{leaf}" for p in _QKV]
        absent = [p for p in parts if p not in renamed]
        if absent:
            raise WeightMismatchError(f"Hugging Face attention weights incomplete, missing {absent}")
        fused[f"{prefix}.qkv.{leaf}"] = np.concatenate([renamed[p] for p in parts], axis=0)
    return fused


def timm_to_hf(tree_state_dict: Mapping[str, np.ndarray], hf_keys: Iterable[str]) -> dict[str, np.ndarray]:
    """The arrays of a Hugging Face state_dict with `hf_keys` (its model's own keys), from timm's
    names: the inverse of `hf_to_timm`, splitting q|k|v. `num_batches_tracked` is left out."""
    out = {}
    for key in hf_keys:
        if key.endswith("num_batches_tracked"):
            continue
        name = _timm_name(key)
        match = _SPLIT_ATTENTION.match(name)
        if match:
            prefix, part, leaf = match.groups()
            out[key] = np.split(tree_state_dict[f"{prefix}.qkv.{leaf}"], 3, axis=0)[_QKV.index(part)]
        else:
            out[key] = tree_state_dict[name]
    return out


SOURCES = {"timm": numpy_state_dict, "hf": hf_to_timm}
# How the ImageNet weights see an image: timm's pretrained config (inputs in [0, 1]).
IMAGENET_PREPROCESS = {"image_size": 256, "resolution": 256, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
TARGETS = {"timm": lambda sd: sd}  # "hf" is a directory: convert/hf_directory.py


def model_kwargs_of(tree_state_dict: Mapping[str, np.ndarray], given: Mapping[str, Any]) -> dict[str, Any]:
    if "head.fc.weight" not in tree_state_dict:
        raise WeightMismatchError("no classifier weight 'head.fc.weight' (or HF 'classifier.weight') in the weights")
    return {"num_classes": int(tree_state_dict["head.fc.weight"].shape[0])}


def fetch(name: str, source: str, tag: str | None = None) -> dict[str, Any]:
    """Downloads the published ImageNet weights (needs a network and the `torch` extra); `tag` is
    a timm pretrained tag or a Hugging Face model id."""
    if source == "timm":
        import timm

        return timm.create_model(f"{TIMM_IDS[name]}.{tag}" if tag else TIMM_IDS[name], pretrained=True).state_dict()
    from transformers import MobileViTForImageClassification

    return hub.from_pretrained(MobileViTForImageClassification.from_pretrained, tag or HF_IDS[name]).state_dict()
