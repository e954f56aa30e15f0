"""Generic PyTorch state_dict <-> Flax NNX module mapping.

A model whose attribute tree mirrors the PyTorch module tree converts mechanically: the torch key
`a.0.conv.weight` names module `model.a[0].conv` and its leaf `weight`; the module's type decides
the Flax leaf name and the transform (conv OIHW <-> HWIO, linear (out,in) <-> (in,out)). Every
parameter and statistic of the model must be filled exactly once, with the same shape, and every
torch key must be used; otherwise a `WeightMismatchError` names the keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from megathread_jax.errors import UserError
from megathread_jax.models import weight_state
from megathread_jax.models.convolution import Conv2d
from megathread_jax.models.gpt2 import Conv1D, Embedding
from megathread_jax.models.layers import BatchNorm

# Keys PyTorch keeps that carry no weights.
IGNORED_TORCH_LEAVES = ("num_batches_tracked",)


class WeightMismatchError(UserError, ValueError):
    """A state_dict does not fit the model: missing, unexpected or mis-shaped keys."""


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _conv_to_flax(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 1, 0)  # OIHW -> HWIO (depthwise (C,1,kh,kw) -> (kh,kw,1,C))


def _conv_to_torch(a: np.ndarray) -> np.ndarray:
    return a.transpose(3, 2, 0, 1)


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.T


Rule = tuple[str, Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]


def _embedding_rules(module: Embedding) -> dict[str, Rule]:
    """Pads the table to the model's stored rows and slices it back; another vocabulary is left
    unpadded so that the shape check reports it."""
    rows = module.weight.get_value().shape[0]
    real = module.num_embeddings

    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, ((0, rows - real), (0, 0))) if a.shape[0] == real else a

    return {"weight": ("weight", pad, lambda a: a[:real])}


# module type -> {torch leaf: (flax leaf, to_flax, to_torch)}, or a function of the module giving that
_LEAF_RULES: dict[type, dict[str, Rule] | Callable[[Any], dict[str, Rule]]] = {
    Conv2d: {
        "weight": ("kernel", _conv_to_flax, _conv_to_torch),
        "bias": ("bias", _identity, _identity),
    },
    BatchNorm: {
        "weight": ("scale", _identity, _identity),
        "bias": ("bias", _identity, _identity),
        "running_mean": ("mean", _identity, _identity),
        "running_var": ("var", _identity, _identity),
    },
    nnx.Linear: {
        "weight": ("kernel", _transpose, _transpose),
        "bias": ("bias", _identity, _identity),
    },
    nnx.LayerNorm: {
        "weight": ("scale", _identity, _identity),
        "bias": ("bias", _identity, _identity),
    },
    Conv1D: {  # Hugging Face's Conv1D already stores (in, out)
        "weight": ("weight", _identity, _identity),
        "bias": ("bias", _identity, _identity),
    },
    Embedding: _embedding_rules,
}


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device/dtype) or array-like as a numpy array, without copying numpy input."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def numpy_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A state_dict whose names already match the model's tree, as numpy arrays."""
    return {key: to_numpy(value) for key, value in state_dict.items()}


def _parse_path(key: str) -> tuple[str | int, ...]:
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def _submodule(model: nnx.Module, path: tuple[str | int, ...]) -> Any:
    node: Any = model
    for part in path:
        try:
            node = node[part] if isinstance(part, int) else getattr(node, part)
        except (AttributeError, IndexError, TypeError, KeyError):
            return None
    return node


def _rule_for(module: Any) -> dict[str, Rule] | None:
    for module_type, rules in _LEAF_RULES.items():
        if isinstance(module, module_type):
            return rules(module) if callable(rules) else rules
    return None


def _weight_state(model: nnx.Module) -> dict[tuple, nnx.Variable]:
    return dict(nnx.to_flat_state(weight_state(model)))


def load_state_dict(model: nnx.Module, state_dict: Mapping[str, Any]) -> nnx.Module:
    """Copies a tree-named torch state_dict into `model` in place; strict about keys and shapes."""
    targets = _weight_state(model)
    values: dict[tuple, np.ndarray] = {}
    unexpected, mismatched = [], []
    for key, tensor in state_dict.items():
        *module_path, leaf = key.split(".")
        if leaf in IGNORED_TORCH_LEAVES:
            continue
        module_path_t = _parse_path(".".join(module_path)) if module_path else ()
        rules = _rule_for(_submodule(model, module_path_t))
        if rules is None or leaf not in rules:
            unexpected.append(key)
            continue
        flax_leaf, to_flax, _ = rules[leaf]
        path = module_path_t + (flax_leaf,)
        if path not in targets:
            unexpected.append(key)
            continue
        array = to_flax(to_numpy(tensor))
        expected = targets[path].get_value().shape
        if array.shape != expected:
            mismatched.append(f"{key}: checkpoint {tuple(array.shape)} vs model {tuple(expected)} (Flax layout)")
            continue
        values[path] = array
    missing = [_torch_name(model, path)[0] for path in targets if path not in values]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched))
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if problems:
        raise WeightMismatchError(f"state_dict does not fit {type(model).__name__}: " + " | ".join(problems))
    for path, array in values.items():
        variable = targets[path]
        # A copy: jax may otherwise alias the torch tensor's memory, which torch can change in place.
        variable.set_value(jnp.array(array, dtype=variable.get_value().dtype, copy=True))
    return model


def _torch_name(model: nnx.Module, path: tuple) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """The torch key of Flax variable `path` and the transform into torch layout."""
    module_path, flax_leaf = path[:-1], path[-1]
    rules = _rule_for(_submodule(model, module_path)) or {}
    for torch_leaf, (f, _, to_torch) in rules.items():
        if f == flax_leaf:
            return ".".join(str(p) for p in module_path + (torch_leaf,)), to_torch
    raise WeightMismatchError(f"no PyTorch name for Flax variable {'.'.join(map(str, path))}")


def export_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's parameters and statistics as a tree-named torch-layout state_dict of numpy arrays.

    `num_batches_tracked` is not written: it carries no weights, and PyTorch fills it in on load.
    """
    out = {}
    for path, variable in _weight_state(model).items():
        key, to_torch = _torch_name(model, path)
        out[key] = np.ascontiguousarray(to_torch(np.asarray(variable.get_value())))
    return out
