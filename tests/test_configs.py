import importlib.util
import pathlib
import re

import pytest

from megathread_jax import config_base, config_fields
from megathread_jax.errors import ConfigurationError

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


@pytest.mark.parametrize(
    "module, variant",
    [(m, v) for m in (mobilevit_config, mobilenetv2_config, gpt2_config) for v in m.VARIANTS],
)
def test_every_field_of_every_variant_has_a_meaning_and_a_valid_default(module, variant):
    config = module.get_config(variant)
    assert [p for p in config_base.field_paths(config) if p not in config_fields.MEANINGS] == []
    config_fields.check(config)
    assert set(config_fields.RESUMABLE_CHANGES) <= set(config_fields.MEANINGS)


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"batch_size": 0}, "config.batch_size=0 is not valid: it must be an integer >= 1"),
        ({"eval_batch_size": -5}, "config.eval_batch_size=-5"),
        ({"optim.learning_rate": 0.0}, "config.optim.learning_rate=0.0 is not valid: it must be a number > 0"),
        ({"optim.warmup_epochs": 40.0}, "config.optim.warmup_epochs=40.0 is not valid: it must be at most num_epochs"),
        ({"data.resolution": 8}, "config.data.resolution=8 is not valid: it must be an integer >= 32"),
        ({"data.crop_scale": (0.0, 1.0)}, "0 < min <= max <= 1"),
        ({"log_every_steps": 0}, "config.log_every_steps=0"),
        ({"checkpoint_every_steps": -1}, "config.checkpoint_every_steps=-1"),
        ({"model.dtype": "float64"}, "one of float32, bfloat16, float16"),
        ({"unfreeze": "features@soon"}, "is not PATTERN@NUMBER"),
        ({"lr_multipliers": "features=x"}, "is not PATTERN=NUMBER"),
    ],
)
def test_bad_values_name_the_field_the_value_and_the_range(overrides, words):
    config = config_base.load_config(CONFIGS / "mobilenetv2.py:finetune", overrides)
    with pytest.raises(ConfigurationError, match=re.escape(words)):
        config_fields.check(config)


def test_an_unknown_field_names_the_closest_one():
    with pytest.raises(ConfigurationError, match=r"did you mean config\.optim\.warmup_epochs\?"):
        config_base.load_config(CONFIGS / "mobilevit.py:demo", {"optim.warmup_epoch": 1.0})
