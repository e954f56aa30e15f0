import importlib.util
import pathlib

import pytest

PATH = pathlib.Path(__file__).resolve().parents[1] / "configs" / "mobilevit.py"
spec = importlib.util.spec_from_file_location("mobilevit_config", PATH)
mobilevit_config = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mobilevit_config)


@pytest.mark.parametrize("variant", mobilevit_config.VARIANTS)
def test_every_variant_builds(variant):
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


def test_default_is_pretrained_96():
    assert mobilevit_config.get_config().to_dict() == mobilevit_config.get_config("pretrained_96").to_dict()


def test_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match="scratch_64"):
        mobilevit_config.get_config("scratch_128")
