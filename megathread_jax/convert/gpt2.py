"""GPT-2 weights from Hugging Face: `GPT2LMHeadModel` names are ours, `lm_head` is tied to `wte`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from megathread_jax import hub
from megathread_jax.convert.tree import WeightMismatchError, numpy_state_dict
from megathread_jax.models import gpt2

# Causal-mask buffers that older checkpoints store; they carry no weights.
_BUFFERS = re.compile(r"\.attn\.(bias|masked_bias)$")
_WTE = "transformer.wte.weight"


def hf_to_tree(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A `GPT2LMHeadModel` or bare `GPT2Model` state_dict (the hub's `gpt2` files have no
    `transformer.` prefix) in our names; the tied `lm_head.weight` is checked and dropped."""
    arrays = numpy_state_dict(state_dict)
    if not any(key.startswith("transformer.") for key in arrays):
        arrays = {(key if key.startswith("lm_head.") else f"transformer.{key}"): v for key, v in arrays.items()}
    tree = {key: value for key, value in arrays.items() if not _BUFFERS.search(key)}
    head = tree.pop("lm_head.weight", None)
    if head is not None and _WTE in tree and not np.array_equal(head, tree[_WTE]):
        raise WeightMismatchError(
            "lm_head.weight differs from transformer.wte.weight; only tied GPT-2 heads are supported"
        )
    return tree


def tree_to_hf(tree_state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**tree_state_dict, "lm_head.weight": tree_state_dict[_WTE]}


SOURCES = {"hf": hf_to_tree}
TARGETS = {"hf": tree_to_hf}


def model_kwargs_of(tree_state_dict: Mapping[str, np.ndarray], given: Mapping[str, Any]) -> dict[str, Any]:
    """The GPT-2 shape the weights hold. The head count is not in the weights: it is taken from the
    published size with the same width, or must be given."""
    for key in (_WTE, "transformer.wpe.weight", "transformer.h.0.mlp.c_fc.weight"):
        if key not in tree_state_dict:
            raise WeightMismatchError(f"no {key!r} in the weights: not a GPT-2 state_dict")
    vocab_size, n_embd = tree_state_dict[_WTE].shape
    layers = {int(m.group(1)) for key in tree_state_dict if (m := re.match(r"transformer\.h\.(\d+)\.", key))}
    kwargs: dict[str, Any] = {
        "vocab_size": int(vocab_size),
        "n_embd": int(n_embd),
        "n_positions": int(tree_state_dict["transformer.wpe.weight"].shape[0]),
        "n_layer": max(layers) + 1 if layers else 0,
    }
    inner = int(tree_state_dict["transformer.h.0.mlp.c_fc.weight"].shape[1])
    if inner != 4 * n_embd:
        kwargs["n_inner"] = inner
    if "n_head" not in given:
        heads = {size.get("n_embd", 768): size.get("n_head", 12) for size in gpt2.SIZES.values()}
        if n_embd not in heads:
            raise WeightMismatchError(
                f"GPT-2 weights of width {n_embd} are not a published size; give the head count (n_head=...)"
            )
        kwargs["n_head"] = heads[n_embd]
    return kwargs


def fetch(name: str, source: str, tag: str | None = None) -> dict[str, Any]:
    """Downloads published weights from the Hugging Face hub; `tag` is a model id (default `name`)."""
    from transformers import GPT2LMHeadModel

    return hub.from_pretrained(GPT2LMHeadModel.from_pretrained, tag or name).state_dict()
