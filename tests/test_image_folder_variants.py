"""Every image config variant takes an image folder: its model gets the folder's classes (from the
converted reference weights where the variant starts pretrained), each freezing rule matches the
model at every phase, and a forward pass at the variant's resolution scores each class."""

import numpy as np
import pytest
import timm
import torch
import torchvision
from flax import nnx

from megathread_jax import checkpoints, config_base, freezing, tasks, train
from megathread_jax.convert.__main__ import main as convert_main
from megathread_jax.data import augment
from tests.conftest import run_flax
from tests.data.test_image_folder import CLASSES, make_folder
from tests.test_configs import CONFIGS, mobilenetv2_config, mobilevit_config

REFERENCES = {
    "mobilenet_v2": ("torchvision", lambda: torchvision.models.mobilenet_v2()),
    "mobilevit_xxs": ("timm", lambda: timm.create_model("mobilevit_xxs")),
}
VARIANTS = [("mobilenetv2", v) for v in mobilenetv2_config.VARIANTS] + [
    ("mobilevit", v) for v in mobilevit_config.VARIANTS
]


def _dotted(params: nnx.State) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(params)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("images") / "my images", per_class=5)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Converted random-weight references, one directory per model, made when first asked for."""
    root, made = tmp_path_factory.mktemp("converted"), {}

    def weights_for(model_name: str):
        if model_name not in made:
            source, build = REFERENCES[model_name]
            torch.manual_seed(0)
            torch.save(build().state_dict(), root / f"{model_name}.pth")
            made[model_name] = root / model_name
            command = ["--model", model_name, "--source", source, "--weights", str(root / f"{model_name}.pth")]
            assert convert_main([*command, "--out", str(made[model_name])]) == 0
        return made[model_name]

    return weights_for


@pytest.mark.parametrize(("config_file", "variant"), VARIANTS, ids=[f"{f}:{v}" for f, v in VARIANTS])
def test_every_image_variant_takes_a_folder(config_file, variant, folder, converted):
    config = config_base.load_config(CONFIGS / f"{config_file}.py:{variant}")
    pretrained = bool(config.init_from)
    overrides = {"data.name": "image_folder", "data.path": str(folder), "data.val_fraction": 0.2}
    if pretrained:
        overrides["init_from"] = str(converted(config.model.name))
    config = config_base.load_config(CONFIGS / f"{config_file}.py:{variant}", overrides)

    task = tasks.create(config)
    assert task.dataset.class_names == tuple(sorted(CLASSES)) and task.num_val_examples == 3
    model = train.build_model(config, task.model_kwargs)
    params = nnx.state(model, nnx.Param)
    flat = _dotted(params)
    head = [v for k, v in flat.items() if k.startswith(model.classifier_path) and v.ndim == 2]
    assert [h.shape[-1] for h in head] == [len(CLASSES)]
    if pretrained:
        reference_model, _ = checkpoints.model_from_weights(overrides["init_from"])
        reference = _dotted(nnx.state(reference_model, nnx.Param))
        backbone = [k for k in reference if not k.startswith(model.classifier_path) and k in flat]
        assert backbone and all(np.array_equal(flat[k], reference[k]) for k in backbone)

    plan = freezing.FreezePlan.from_config(config)
    plan.check_matches(params)
    total = sum(v.size for v in flat.values())
    phases = [0.0] + sorted({epoch for _, epoch in plan.unfreeze})
    counts = [freezing.count_parameters(plan, params, epoch) for epoch in phases]
    assert all(trainable + frozen == total for trainable, frozen in counts)
    trainable = [t for t, _ in counts]
    assert trainable == sorted(trainable) and trainable[0] > 0  # each phase unfreezes, the head always trains
    if config.freeze or config.unfreeze:
        assert trainable[0] < total

    model.eval()
    mean, std = task.weights_meta["preprocess"]["mean"], task.weights_meta["preprocess"]["std"]
    inputs = augment.eval_preprocess(task.dataset.val_images, resolution=config.data.resolution, mean=mean, std=std)
    logits = run_flax(model, inputs)
    assert logits.shape == (3, len(CLASSES)) and np.isfinite(logits).all()
