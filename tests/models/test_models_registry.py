"""Registry-parametrised checks: every registered backbone builds, runs, trains and decomposes."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ensemblekit.models import MODELS, Backbone, LayerFactory, build_model, create_model, list_models, spec_from_dict

NAMES = list_models()


def test_registry_has_the_required_names():
    required = {
        *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
        "resnet18",
        *("wrn16_4", "wrn16_8", "wrn22_2", "wrn28_2", "wrn28_10", "wrn40_2"),
        *("vgg11", "vgg13", "vgg16", "vgg19"),
        *("densenet_bc100_12", "densenet_bc40_12"),
    }
    assert required <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_decomposition(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    assert isinstance(model, Backbone)
    assert isinstance(model.stages, nn.ModuleList) and len(model.stages) == model.spec.num_stages
    assert all(isinstance(stage, nn.Sequential) for stage in model.stages)
    assert isinstance(model.head.fc, nn.Linear)
    assert model.head.fc.in_features == model.spec.num_features and model.head.fc.out_features == 10

    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 10)
    F.cross_entropy(logits, torch.tensor([1, 7])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"

    model.eval()
    with torch.no_grad():
        expected = model(x)
        h = model.stem(x)
        for stage, channels in zip(model.stages, model.spec.stage_out_channels):
            h = stage(h)
            assert h.shape[1] == channels
        torch.testing.assert_close(model.head(h), expected, rtol=0, atol=0)
        torch.testing.assert_close(model.head(model.forward_features(x)), expected, rtol=0, atol=0)


class _Conv(nn.Conv2d):
    pass


class _BN(nn.BatchNorm2d):
    pass


class _Linear(nn.Linear):
    pass


class CountingFactory(LayerFactory):
    def __init__(self):
        self.calls = {"conv2d": 0, "batchnorm2d": 0, "linear": 0}

    def conv2d(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        self.calls["conv2d"] += 1
        return _Conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)

    def batchnorm2d(self, channels):
        self.calls["batchnorm2d"] += 1
        return _BN(channels)

    def linear(self, in_features, out_features, bias=True):
        self.calls["linear"] += 1
        return _Linear(in_features, out_features, bias=bias)


@pytest.mark.parametrize("name", NAMES)
def test_every_conv_bn_linear_comes_from_the_factory(name):
    factory = CountingFactory()
    with torch.device("meta"):
        model = create_model(name, layers=factory)
    modules = list(model.modules())
    for base, sub, key in (
        (nn.Conv2d, _Conv, "conv2d"),
        (nn.BatchNorm2d, _BN, "batchnorm2d"),
        (nn.Linear, _Linear, "linear"),
    ):
        found = [m for m in modules if isinstance(m, base)]
        assert found, f"{name} has no {base.__name__}"
        assert all(isinstance(m, sub) for m in found), f"{name}: a {base.__name__} bypassed the factory"
        assert factory.calls[key] == len(found)
    assert factory.calls["linear"] == 1


@pytest.mark.parametrize("name", NAMES)
def test_spec_round_trips_through_dict_and_json(name):
    with torch.device("meta"):
        model = create_model(name)
        spec = model.spec
        assert spec_from_dict(asdict(spec)) == spec
        assert spec_from_dict(json.loads(json.dumps(asdict(spec)))) == spec
        rebuilt = build_model(spec_from_dict(asdict(spec)))
    assert rebuilt.spec == spec
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}


@pytest.mark.parametrize("name", NAMES)
def test_every_name_is_documented(name):
    doc = MODELS.get(name).__doc__
    assert doc and len(doc.split()) > 10
