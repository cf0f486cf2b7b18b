"""Every registered model pinned to the values the per-name wrapper functions gave before the spec registry.

``PINNED[name] = (parameters, layout, weighted_sum, sum_of_squares)``: the parameter count for 10 classes at
width 1 (built on the meta device), and a fingerprint of the state_dict of the model built with
``torch.manual_seed(0)`` at width 0.25 (the names and shapes of its tensors, hashed, and two sums of its
floating-point entries). The table was computed with the code of commit 229a36f, before any model was
registered as a spec, so a registry that changes a model's structure, its initialisation or the order in which
its weights are drawn fails here.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from ensemblekit.models import create_model, list_models

PINNED: dict[str, tuple[int, str, float, float]] = {
    "densenet": (769162, "7fdd1ec5aae64137", -1544.1977405101184, 11807.938865318814),
    "densenet40_12": (1019722, "d34e0dba09bacd5d", 563.6639693788763, 8837.072692541766),
    "densenet_bc100_12": (769162, "7fdd1ec5aae64137", -1544.1977405101184, 11807.938865318814),
    "densenet_bc40_12": (176122, "fae8667ce9aa8104", -336.86130780276204, 2497.990462008168),
    "preact_resnet": (11172170, "8b651ee267c28513", 3372.3544584517076, 3874.8900587880803),
    "resnet": (272474, "7feb47056c4e91f5", -463.13284560339366, 744.5996642927139),
    "resnet110": (1730714, "f61ec10ed54c9228", -398.1529898100446, 4098.351862125479),
    "resnet14": (175258, "13bbc054f2dda5da", 195.7419949211249, 524.0532834083913),
    "resnet18": (11172170, "8b651ee267c28513", 3372.3544584517076, 3874.8900587880803),
    "resnet20": (272474, "7feb47056c4e91f5", -463.13284560339366, 744.5996642927139),
    "resnet32": (466906, "9d9ece6346029ab1", 941.3142804643074, 1182.497658342932),
    "resnet44": (661338, "c232e8a996a1618f", -2120.876644891395, 1628.6606308961798),
    "resnet56": (855770, "10e0504b97bf9ee8", 1498.8004675306602, 2089.1037411568714),
    "resnet8": (78042, "06a2e0926ac665f7", 68.20377167203694, 288.7489704843481),
    "vgg": (14728266, "6b5117d7e24c7270", 2022.0530409267656, 3974.0051910550847),
    "vgg11": (9231114, "1cd8b1bf4d4b7022", 256.89089182149706, 2502.016694360974),
    "vgg13": (9416010, "65bb60f5ca5d0c2c", -326.7787876973568, 2692.776448576802),
    "vgg16": (14728266, "6b5117d7e24c7270", 2022.0530409267656, 3974.0051910550847),
    "vgg19": (20040522, "698ada0441f14387", -2121.007089511308, 5256.979558482418),
    "wrn": (36479194, "1c04e40d07ea316c", 3997.948647803273, 8915.365147712164),
    "wrn16_4": (2748890, "79af82ccddfdc283", 1240.964918102027, 1790.9415344728639),
    "wrn16_8": (10961370, "67bc3dc03f624fdd", 1210.8156539272575, 3547.4731235560816),
    "wrn22_2": (1079642, "326f32bca64c657f", 685.687982042311, 1363.227709996846),
    "wrn28_10": (36479194, "1c04e40d07ea316c", 3997.948647803273, 8915.365147712164),
    "wrn28_2": (1467610, "6e1b2e4f173dc814", 959.0924135295572, 1805.6736595048133),
    "wrn40_2": (2243546, "f0d999d23a984807", -3571.3554964535497, 2707.2009861456445),
}


def fingerprint(name: str) -> tuple[str, float, float]:
    """``(layout hash, position-weighted sum, sum of squares)`` of the seeded width-0.25 model's state_dict."""
    torch.manual_seed(0)
    state = create_model(name, num_classes=10, width=0.25).state_dict()
    layout = ";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    tensors = [v.detach().double().flatten() for v in state.values() if v.is_floating_point()]
    weighted = sum(
        float(v @ torch.linspace(-1.0, 1.0, v.numel(), dtype=torch.float64)) * (i + 1) for i, v in enumerate(tensors)
    )
    squares = sum(float(v @ v) for v in tensors)
    return hashlib.sha256(layout.encode()).hexdigest()[:16], weighted, squares


def test_every_registered_model_is_pinned():
    assert sorted(PINNED) == list_models()


@pytest.mark.parametrize("name", sorted(PINNED))
def test_parameter_count_is_unchanged(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == PINNED[name][0]


@pytest.mark.parametrize("name", sorted(PINNED))
def test_seeded_state_dict_is_unchanged(name):
    layout, weighted, squares = fingerprint(name)
    assert layout == PINNED[name][1]
    assert weighted == pytest.approx(PINNED[name][2], rel=1e-7, abs=1e-6)
    assert squares == pytest.approx(PINNED[name][3], rel=1e-7)
