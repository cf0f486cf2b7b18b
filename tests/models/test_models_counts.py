"""Exact parameter counts against the published / reference implementations (10 classes)."""

from __future__ import annotations

import pytest
import torch

from ensemblekit.models import create_model


def count(name, **kwargs):
    with torch.device("meta"):
        model = create_model(name, num_classes=10, **kwargs)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("resnet20", {"shortcut": "zero_pad"}, 269_722),
        ("resnet20", {"shortcut": "projection"}, 272_474),
        ("resnet20", {}, 272_474),
        ("resnet56", {}, 855_770),
        ("resnet110", {"shortcut": "zero_pad"}, 1_727_962),
        ("resnet18", {"final_bn": False}, 11_171_146),
        ("resnet18", {"final_bn": True}, 11_172_170),
        ("resnet18", {}, 11_172_170),
        ("wrn28_10", {}, 36_479_194),
        ("wrn16_4", {}, 2_748_890),
        ("vgg16", {}, 14_728_266),
        ("vgg16", {"conv_bias": False}, 14_724_042),
        ("densenet_bc100_12", {}, 769_162),
        ("densenet_bc40_12", {}, 176_122),
        ("densenet40_12", {}, 1_019_722),
    ],
)
def test_parameter_count(name, kwargs, expected):
    assert count(name, **kwargs) == expected


def test_generic_entries_match_named_ones():
    assert count("resnet", depth=56) == count("resnet56")
    assert count("wrn", depth=16, widen_factor=4) == count("wrn16_4")
    assert count("vgg", depth=11) == count("vgg11")
    assert count("densenet", depth=40, growth_rate=12) == count("densenet_bc40_12")
    assert count("preact_resnet", depth=18) == count("resnet18")


def test_num_classes_changes_only_the_classifier():
    with torch.device("meta"):
        m100 = create_model("resnet20", num_classes=100)
    assert sum(p.numel() for p in m100.parameters()) == 272_474 + 90 * 64 + 90
