"""The spec registry: a model is a family plus the arguments its name fixes; its options come from the family."""

from __future__ import annotations

import inspect

import pytest
import torch

from ensemblekit.errors import UserError
from ensemblekit.methods import METHODS
from ensemblekit.methods.base import is_backbone_builder
from ensemblekit.models import FAMILIES, MODELS, check_model_options, create_model, list_models
from ensemblekit.models.registry import ModelEntry, register_model
from ensemblekit.resolve import config_from_dict
from tests.byo.custom_nets import TinyCNN
from tests.conftest import tiny_config

NAMES = list_models()


@pytest.mark.parametrize("name", NAMES)
def test_every_builtin_model_is_a_family_and_fixed_arguments(name):
    entry = MODELS.get(name)
    assert isinstance(entry, ModelEntry) and entry.name == name
    arguments = FAMILIES.get(entry.family).arguments
    assert set(entry.arguments) <= set(arguments)
    assert entry.options == {k: v for k, v in arguments.items() if k not in entry.arguments}
    assert all(v is not inspect.Parameter.empty for v in entry.options.values())  # every option has a default
    params = list(inspect.signature(entry).parameters)
    assert params == ["num_classes", *entry.options, "layers"]
    assert is_backbone_builder(name)  # takes layers=: an ensemblekit backbone, not a custom module


@pytest.mark.parametrize("name", [n for n in NAMES if MODELS.get(n).arguments])
def test_a_named_model_is_its_general_model_with_the_fixed_arguments(name):
    entry = MODELS.get(name)
    general = [n for n in NAMES if MODELS.get(n).family == entry.family and not MODELS.get(n).arguments]
    assert len(general) == 1
    with torch.device("meta"):
        named = create_model(name, num_classes=7, width=0.5)
        generic = create_model(general[0], num_classes=7, width=0.5, **entry.arguments)
    assert named.spec == generic.spec
    assert {k: v.shape for k, v in named.state_dict().items()} == {k: v.shape for k, v in generic.state_dict().items()}


def test_options_are_checked_against_the_spec():
    with pytest.raises(UserError, match=r"^model 'wrn28_10' has no option\(s\) colour; valid: width, dropout, "):
        create_model("wrn28_10", colour="red")
    fixed = r"has no option\(s\) depth; valid: .* \(depth is fixed at 28 by the name; model 'wrn' takes it\)"
    with pytest.raises(UserError, match=fixed):
        check_model_options("wrn28_10", {"depth": 16})
    for reserved in ("layers", "num_classes"):  # set by ensemblekit, never by a config
        with pytest.raises(UserError, match=rf"has no option\(s\) {reserved}; valid: width, shortcut, dropout"):
            check_model_options("resnet20", {reserved: 1})
    check_model_options("resnet20", {"layers": None}, internal=True)
    check_model_options("resnet", {"depth": 56, "shortcut": "zero_pad"})
    with pytest.raises(UserError, match=r"depth must be 6n\+2"):  # values too, without building a network
        check_model_options("resnet", {"depth": 21})
    with pytest.raises(UserError, match="shortcut must be one of projection, zero_pad"):
        check_model_options("resnet20", {"shortcut": "B"})


def test_config_refuses_unknown_model_options_in_validation():
    raw = tiny_config()
    raw["model"] = {"name": "resnet8", "kwargs": {"layers": 1}}
    with pytest.raises(UserError, match=r"^config error: model\.kwargs: model 'resnet8' has no option\(s\) layers"):
        config_from_dict(raw)
    raw["model"] = {"name": "vgg11", "kwargs": {"depth": 16}}
    with pytest.raises(UserError, match=r"depth is fixed at 11 by the name; model 'vgg' takes it"):
        config_from_dict(raw)


def test_member_architectures_are_checked_when_the_options_are():
    mothernets, distillation = METHODS.get("mothernets"), METHODS.get("distillation")
    with pytest.raises(UserError, match=r"method\.architectures\.1: model 'resnet14' has no option\(s\) colour"):
        mothernets.parse_options({"architectures": [{"name": "resnet8"}, {"name": "resnet14", "colour": "red"}]})
    with pytest.raises(UserError, match=r"method\.teacher: model 'resnet8' has no option\(s\) layers"):
        distillation.parse_options({"teacher": {"name": "resnet8", "layers": 1}})
    with pytest.raises(UserError, match=r"method\.teacher: unknown model 'resnet9'; valid: "):
        distillation.parse_options({"teacher": {"name": "resnet9"}})
    options = mothernets.parse_options({"architectures": [{"name": "resnet", "depth": 14, "width": 0.5}]})
    assert options.architectures[0].kwargs == {"depth": 14, "width": 0.5}


def test_register_model_adds_a_variant_without_a_wrapper(monkeypatch):
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))  # forget the test's registrations afterwards
    entry = register_model("test_resnet26", family="resnet", depth=26, doc="CIFAR ResNet-26, for this test.")
    assert MODELS.get("test_resnet26") is entry and entry.__doc__ == (
        "CIFAR ResNet-26, for this test. Options: width=1.0, shortcut='projection', dropout=0.0, in_channels=3 "
        "(see ``resnet_spec``)."
    )
    with torch.device("meta"):
        model = create_model("test_resnet26", num_classes=10, shortcut="zero_pad")
        same = create_model("resnet", num_classes=10, depth=26, shortcut="zero_pad")
    assert model.spec == same.spec and model.spec.stage_blocks == (4, 4, 4)
    with pytest.raises(ValueError, match=r"family 'resnet' has no argument\(s\) widen_factor"):
        register_model("test_bad", family="resnet", widen_factor=2, doc="")
    with pytest.raises(ValueError, match="already registered"):
        register_model("test_resnet26", family="resnet", depth=26, doc="")
    with pytest.raises(UserError, match="unknown model family 'mlp'"):
        register_model("test_mlp", family="mlp", doc="")


def test_a_users_plain_factory_registered_with_the_decorator_still_works(monkeypatch):
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))

    @MODELS.register("test_tiny_cnn")
    def tiny_cnn(num_classes=10, channels=8):
        return TinyCNN(num_classes, channels)

    check_model_options("test_tiny_cnn", {"channels": 4})
    with pytest.raises(UserError, match=r"model 'test_tiny_cnn' has no option\(s\) depth; valid: channels"):
        check_model_options("test_tiny_cnn", {"depth": 4})
    net = create_model("test_tiny_cnn", num_classes=3, channels=4)
    assert isinstance(net, TinyCNN) and net.classifier.out_features == 3 and net.classifier.in_features == 8
    assert not is_backbone_builder("test_tiny_cnn")
