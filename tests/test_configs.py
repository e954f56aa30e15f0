import importlib.util
import pathlib

import pytest

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_config", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mobilevit_config = _load("mobilevit")
mobilenetv2_config = _load("mobilenetv2")


@pytest.mark.parametrize("variant", mobilevit_config.VARIANTS)
def test_every_mobilevit_variant_builds(variant):
    config = mobilevit_config.get_config(variant)
    assert config.model.name == "mobilevit_xxs"
    if variant.startswith("pretrained"):
        assert config.init_from == "timm" and config.data.normalisation == "unit"
    if variant.startswith("scratch"):
        assert config.init_from == ""
    if variant != "demo":
        assert config.data.resolution == int(variant.split("_")[1]) and config.data.name == "tiny_imagenet"
    else:
        assert config.data.name == "demo_shapes"


@pytest.mark.parametrize("variant", mobilenetv2_config.VARIANTS)
def test_every_mobilenetv2_variant_builds(variant):
    config = mobilenetv2_config.get_config(variant)
    assert config.model.name == "mobilenet_v2"
    assert config.data.name == ("demo_shapes" if variant == "demo" else "cifar10")
    assert (config.init_from == "") == (variant in ("scratch", "demo"))
    expected_rules = {
        "linear_probe": ("features", "", ""),
        "finetune": ("", "", "features=0.1"),
        "gradual": ("", "features.[14-18]@2,features.[7-13]@4,features.[0-6]@6", "features=0.1"),
    }.get(variant, ("", "", ""))
    assert (config.freeze, config.unfreeze, config.lr_multipliers) == expected_rules


def test_defaults():
    assert mobilevit_config.get_config().to_dict() == mobilevit_config.get_config("pretrained_96").to_dict()
    assert mobilenetv2_config.get_config().to_dict() == mobilenetv2_config.get_config("finetune").to_dict()


@pytest.mark.parametrize("module, example", [(mobilevit_config, "scratch_64"), (mobilenetv2_config, "linear_probe")])
def test_unknown_variant_names_the_choices(module, example):
    with pytest.raises(ValueError, match=example):
        module.get_config("bogus")


gpt2_config = _load("gpt2")


@pytest.mark.parametrize("variant", gpt2_config.VARIANTS)
def test_every_gpt2_variant_builds(variant):
    config = gpt2_config.get_config(variant)
    assert config.task == "language_modelling" and config.model.name == "gpt2"
    assert (config.data.name, config.data.tokenizer) == (
        ("pydoc", "bytes") if variant == "demo" else ("hf_dataset", "gpt2")
    )
    assert (config.init_from == "") == (variant == "demo")
    assert (config.num_epochs == 0) == (variant == "eval_ppl")
    assert config.data.seq_len <= config.model.get("n_positions", 1024)
