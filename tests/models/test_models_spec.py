"""Specs: building, round trips with weights, transformed specs, validation."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, asdict, replace

import pytest
import torch

from ensemblekit.errors import UserError
from ensemblekit.models import DenseNetSpec, ResNetSpec, VGGSpec, build_model, create_model, spec_from_dict
from ensemblekit.models.vgg import CONFIGS


def n_params(model):
    return sum(p.numel() for p in model.parameters())


SMALL = [
    ("resnet8", {"shortcut": "zero_pad"}),
    ("resnet14", {}),
    ("resnet18", {"width": 0.125}),
    ("resnet18", {"width": 0.125, "final_bn": False}),
    ("wrn16_4", {"width": 0.25, "dropout": 0.3}),
    ("vgg11", {"width": 0.25}),
    ("densenet_bc40_12", {"width": 0.5}),
    ("densenet40_12", {"width": 0.25}),
]


@pytest.mark.parametrize(("name", "kwargs"), SMALL)
def test_rebuilt_spec_loads_state_dict_and_computes_the_same_function(name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    rebuilt = build_model(spec_from_dict(asdict(model.spec)))
    assert n_params(rebuilt) == n_params(model)
    assert str(rebuilt) == str(model)
    x = torch.randn(4, 3, 32, 32)
    model(x)  # move BN running statistics away from their initial values
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


def test_transformed_specs_build_the_transformed_architectures():
    with torch.device("meta"):
        deeper = build_model(replace(create_model("resnet20").spec, stage_blocks=(9, 9, 9)))
        assert n_params(deeper) == 855_770 == n_params(create_model("resnet56"))
        wrn = build_model(replace(create_model("wrn16_4").spec, stage_blocks=(4, 4, 4)))
        assert n_params(wrn) == n_params(create_model("wrn", depth=28, widen_factor=4))
        half = create_model("vgg11", width=0.5).spec
        assert half.conv_channels == ((32,), (64,), (128, 128), (256, 256), (256, 256))
        vgg16 = build_model(replace(half, conv_channels=CONFIGS[16], kernel_sizes=None))
        assert n_params(vgg16) == 14_728_266
        dense = build_model(replace(create_model("densenet_bc40_12").spec, stage_layers=(16, 16, 16)))
        assert n_params(dense) == 769_162


def test_spec_changes_are_reflected_in_modules():
    spec = replace(create_model("vgg11", width=0.25).spec, kernel_sizes=((5,), (3,), (3, 1), (3, 3), (3, 3)))
    model = build_model(spec)
    assert model.stages[0][0].conv.kernel_size == (5, 5) and model.stages[0][0].conv.padding == (2, 2)
    assert model.stages[2][1].conv.kernel_size == (1, 1) and model.stages[2][1].conv.padding == (0, 0)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    mimo = build_model(replace(create_model("resnet8").spec, in_channels=9, num_classes=30))
    assert mimo.stem.conv.in_channels == 9
    assert mimo(torch.randn(2, 9, 32, 32)).shape == (2, 30)


def test_specs_are_frozen_and_normalise_lists():
    spec = ResNetSpec(
        family="resnet",
        block="basic",
        stem_channels=16,
        stage_blocks=[1, 1],
        stage_channels=[16, 32],
        stage_strides=[1, 2],
    )
    assert spec.stage_blocks == (1, 1) and isinstance(spec.stage_channels, tuple)
    with pytest.raises(FrozenInstanceError):
        spec.num_classes = 3
    vgg = VGGSpec(conv_channels=[[8], [16, 16]])
    assert vgg.kernel_sizes == ((3,), (3, 3)) and vgg.stage_layers == (1, 2) and vgg.num_features == 16
    dense = DenseNetSpec(growth_rate=4, stage_layers=[2, 2], stem_channels=8)
    assert dense.stage_out_channels == (8, 16) and dense.num_features == 16


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"family": "mlp"}, "unknown model family 'mlp'"),
        ({"family": "vgg", "conv_channels": [[8]], "colour": 1}, "colour"),
        ({"family": "densenet", "growth_rate": 12}, "DenseNetSpec"),
        ({"family": "vgg", "conv_channels": [[8]], "kernel_sizes": [[3, 3]]}, "nesting"),
        ({"family": "vgg", "conv_channels": [[8]], "kernel_sizes": [[2]]}, "odd"),
        ({"family": "vgg", "conv_channels": [[8]], "dropout": 1.0}, "dropout"),
        ({"family": "vgg", "conv_channels": [[0]]}, "conv_channels"),
        (
            {
                "family": "resnet",
                "block": "preact_basic",
                "stem_channels": 16,
                "stage_blocks": [1],
                "stage_channels": [16],
                "stage_strides": [1],
            },
            "block 'basic'",
        ),
        (
            {
                "family": "resnet",
                "block": "basic",
                "stem_channels": 16,
                "stage_blocks": [1, 1],
                "stage_channels": [16],
                "stage_strides": [1],
            },
            "equal lengths",
        ),
    ],
)
def test_invalid_specs_raise_user_error(data, match):
    with pytest.raises(UserError, match=match):
        spec_from_dict(data)
