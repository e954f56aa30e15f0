"""PyTorch <-> Flax weight conversion: `from_torch(name, state_dict, source=...)`, `to_torch(...)`."""

from __future__ import annotations

import pathlib
import pickle
import pickletools
import zipfile
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np
from flax import nnx

from megathread_jax import models
from megathread_jax.convert import gpt2, mobilenet_v2, mobilevit
from megathread_jax.convert.tree import WeightMismatchError, export_state_dict, load_state_dict
from megathread_jax.errors import ConfigurationError, MissingDependencyError, WeightFileError, WeightsNotFoundError

# What a plain state_dict pickle names: torch.load(weights_only=True) reads these.
_TENSOR_PICKLE_GLOBALS = ("torch.", "collections.OrderedDict")

__all__ = [
    "from_torch",
    "to_torch",
    "read_weight_file",
    "fetch",
    "sources",
    "classifier_meta",
    "WeightMismatchError",
]
IMAGENET_CLASSES = 1000

_FAMILIES: dict[str, ModuleType] = {
    **{name: mobilevit for name in mobilevit.TIMM_IDS},
    "mobilenet_v2": mobilenet_v2,
    **{name: gpt2 for name in models.gpt2.SIZES},
}


def _family(name: str) -> ModuleType:
    if name not in _FAMILIES:
        raise ConfigurationError(f"no converter for model {name!r}; convertible models: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def sources(name: str) -> list[str]:
    """The PyTorch weight sources `from_torch` reads for model `name`."""
    return list(_family(name).SOURCES)


def imagenet_class_names() -> list[str]:
    """ImageNet-1k's class names in label order, as torchvision (or else timm) ships them offline;
    empty when neither is installed (then classes are shown by number)."""
    try:
        from torchvision.models import MobileNet_V2_Weights

        return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
    except ImportError:
        pass
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        return []
    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0] for i in range(IMAGENET_CLASSES)]


def classifier_meta(name: str, model: nnx.Module) -> dict[str, Any]:
    """What `predict` needs beside converted image-model weights: the class names and the
    preprocessing of the ImageNet weights, when the model has ImageNet's 1,000-class head."""
    family = _family(name)
    if not hasattr(family, "IMAGENET_PREPROCESS") or model.shape_kwargs().get("num_classes") != IMAGENET_CLASSES:
        return {}
    return {"class_names": imagenet_class_names(), "preprocess": dict(family.IMAGENET_PREPROCESS)}


def _pick(kind: str, options: Mapping[str, Any], choice: str, name: str) -> Any:
    if choice not in options:
        raise ConfigurationError(f"{kind} {choice!r} not supported for {name}; choose one of {', '.join(options)}")
    return options[choice]


def from_torch(name: str, state_dict: Mapping[str, Any], *, source: str, **model_kwargs: Any) -> nnx.Module:
    """Builds model `name` holding the weights of a PyTorch `state_dict` from `source`.

    `state_dict` values may be torch tensors or numpy arrays. The shape kwargs default to what the
    weights hold (image models: `num_classes`; GPT-2: `n_layer`, `n_embd`, `vocab_size`, ...; give
    `n_head` for a width that is not a published size). Raises `WeightMismatchError` naming every missing, unexpected or
    mis-shaped key. The model comes back in inference mode (dropout off, batch-norm running
    statistics used), like a PyTorch model from `from_pretrained`; `model.train()` switches.
    """
    family = _family(name)
    tree_state_dict = _pick("source", family.SOURCES, source, name)(state_dict)
    model_kwargs = {**family.model_kwargs_of(tree_state_dict, model_kwargs), **model_kwargs}
    model = load_state_dict(models.create(name, **model_kwargs), tree_state_dict)
    model.eval()
    return model


def to_torch(name: str, model: nnx.Module, *, target: str) -> dict[str, Any]:
    """The model's weights as a PyTorch state_dict for `target` (torch tensors)."""
    try:
        import torch
    except ImportError as e:
        raise MissingDependencyError("to_torch needs PyTorch: pip install 'megathread_jax[torch]'") from e
    family = _family(name)
    state_dict = _pick("target", family.TARGETS, target, name)(export_state_dict(model))
    return {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}


def fetch(name: str, source: str, tag: str | None = None) -> dict[str, Any]:
    """Downloads the published pretrained PyTorch weights of `name` from `source` (needs a network).

    `tag` picks among published weights (torchvision: IMAGENET1K_V1 / IMAGENET1K_V2; timm: a
    pretrained tag; Hugging Face: a model id; GPT-2's default is the hub id equal to `name`).
    """
    family = _family(name)
    _pick("source", family.SOURCES, source, name)
    try:
        return family.fetch(name, source, tag)
    except ImportError as e:
        raise MissingDependencyError(
            f"fetching {source} weights needs PyTorch and {source}: pip install 'megathread_jax[torch]'"
        ) from e
    except Exception as e:  # offline: hub and socket errors come in many types
        raise WeightsNotFoundError(
            f"could not download the {source} weights of {name} ({type(e).__name__}: {str(e).splitlines()[0]}). "
            "Offline? Download the weights on a machine with a network and pass the file: "
            f"python -m megathread_jax.convert --model {name} --source {source} --weights FILE --out DIR"
        ) from e


def read_weight_file(path: str | pathlib.Path) -> dict[str, Any]:
    """A state_dict from `.safetensors` (numpy, no torch needed) or `.pt/.pth/.bin` (torch, weights only)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weight file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except SafetensorError as e:
            raise WeightFileError(
                f"{path} is corrupt or not a safetensors file ({e}); download or save it again"
            ) from None
    try:
        import torch
    except ImportError as e:
        raise MissingDependencyError(
            f"reading {path.suffix} files needs PyTorch: pip install 'megathread_jax[torch]'"
        ) from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except pickle.UnpicklingError:
        code = pickled_code(path)
        if code is None:
            raise WeightFileError(f"{path} is corrupt or not a PyTorch file; download or save it again") from None
        raise WeightFileError(
            f"{path} holds objects other than tensors ({code}) and was refused: reading it would run code from "
            "the file. Save a plain state_dict or a .safetensors file."
        ) from None
    except (RuntimeError, EOFError) as e:
        raise WeightFileError(
            f"{path} is corrupt or not a PyTorch file ({str(e).split('. ')[0][:200]}); download or save it again"
        ) from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise WeightFileError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


def pickled_code(path: pathlib.Path) -> str | None:
    """What the pickle in a PyTorch file would import and call beyond tensors and containers (its
    first such global), or None when the file holds no well-formed pickle naming one: then it is
    damaged, not dangerous. Reads the opcodes only; nothing in the file runs."""
    data = path.read_bytes()
    if zipfile.is_zipfile(path):  # torch.save's format: the pickle is the archive's data.pkl
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not names:
                return None
            data = archive.read(names[0])
    strings: list[str] = []
    found: list[str] = []
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(argument)
            elif opcode.name == "GLOBAL":
                found.append(str(argument).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # pickletools reports a malformed stream as several types
        return None
    unusual = [g for g in found if not g.startswith(_TENSOR_PICKLE_GLOBALS)]
    return unusual[0] if unusual else None
