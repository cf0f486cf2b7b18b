"""Options (width, dropout, shortcut, final_bn), block structure, init and user errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.models import create_model, scale_channels
from ensemblekit.models.densenet import DenseLayer, Transition
from ensemblekit.models.preact_resnet import PreActBlock
from ensemblekit.models.resnet_cifar import BasicBlock
from ensemblekit.models.shortcuts import ProjectionShortcut, ZeroPadShortcut
from ensemblekit.models.vgg import ConvBNReLU


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_scale_channels_rounds_half_up_and_never_below_one():
    assert scale_channels(16, 0.5) == 8
    assert scale_channels(16, 0.3) == 5  # 4.8
    assert scale_channels(64, 0.3) == 19  # 19.2
    assert scale_channels(10, 0.25) == 3  # 2.5 rounds up
    assert scale_channels(16, 0.01) == 1
    assert scale_channels(16, 1.0) == 16
    with pytest.raises(UserError, match="width"):
        scale_channels(16, 0)


def test_width_on_cifar_resnet():
    model = create_model("resnet20", width=0.5)
    assert model.spec.stem_channels == 8 and model.spec.stage_channels == (8, 16, 32)
    assert model.stem.conv.out_channels == 8
    assert [s[0].conv2.out_channels for s in model.stages] == [8, 16, 32]
    assert model.head.fc.in_features == 32
    assert create_model("resnet20", width=0.3).spec.stage_channels == (5, 10, 19)
    assert create_model("resnet20", width=2).spec.stage_channels == (32, 64, 128)


def test_width_on_vgg_wrn_preact_densenet():
    vgg = create_model("vgg11", width=0.5)
    assert [c.out_channels for c in convs(vgg)] == [32, 64, 128, 128, 256, 256, 256, 256]
    assert vgg.head.fc.in_features == 256
    wrn = create_model("wrn16_4", width=0.5)
    assert wrn.spec.stem_channels == 8 and wrn.spec.stage_channels == (32, 64, 128)
    pre = create_model("resnet18", width=0.25)
    assert pre.spec.stage_channels == (16, 32, 64, 128) and pre.head.fc.in_features == 128
    dense = create_model("densenet_bc40_12", width=0.5)
    assert dense.spec.growth_rate == 6 and dense.spec.stem_channels == 12
    assert dense.stages[0][0].conv2.out_channels == 6


@pytest.mark.parametrize(
    ("name", "kwargs", "n_dropout"),
    [
        ("resnet20", {}, 9),
        ("resnet18", {"width": 0.125}, 8),
        ("wrn16_4", {"width": 0.25}, 6),
        ("vgg11", {"width": 0.25}, 5),
        ("densenet_bc40_12", {"width": 0.5}, 20),
    ],
)
def test_dropout_option(name, kwargs, n_dropout):
    assert not any(isinstance(m, nn.Dropout) for m in create_model(name, **kwargs).modules())
    torch.manual_seed(0)
    model = create_model(name, dropout=0.3, **kwargs)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == n_dropout and all(d.p == 0.3 for d in drops)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        for d in drops:  # MC dropout: only the dropout modules back in train mode
            d.train()
        assert not torch.equal(model(x), model(x))


def test_resnet_dropout_sits_between_the_convs():
    block = create_model("resnet20", dropout=0.5).stages[0][0]
    names = [name for name, _ in block.named_children()]
    assert names.index("conv1") < names.index("dropout") < names.index("conv2")


def test_cifar_resnet_blocks_and_shortcuts():
    model = create_model("resnet20")
    assert isinstance(model.stem.conv, nn.Conv2d) and isinstance(model.stem.bn, nn.BatchNorm2d)
    blocks = [b for s in model.stages for b in s]
    assert len(blocks) == 9 and all(isinstance(b, BasicBlock) for b in blocks)
    assert model.stages[0][0].shortcut is None and model.stages[1][1].shortcut is None
    sc = model.stages[1][0].shortcut
    assert isinstance(sc, ProjectionShortcut) and sc.conv.kernel_size == (1, 1) and sc.conv.stride == (2, 2)
    assert isinstance(sc.bn, nn.BatchNorm2d)
    assert model.stages[1][0].conv1.stride == (2, 2) and model.head.bn is None and model.head.dropout is None
    zero = create_model("resnet20", shortcut="zero_pad")
    assert isinstance(zero.stages[2][0].shortcut, ZeroPadShortcut)


def test_zero_pad_shortcut_is_option_a():
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0
    assert ZeroPadShortcut(3, 8, 1)(torch.ones(1, 3, 2, 2)).sum() == 12


def test_preact_projection_reads_the_preactivated_input():
    torch.manual_seed(0)
    model = create_model("resnet18", width=0.125)
    block = model.stages[1][0]
    assert isinstance(block, PreActBlock) and isinstance(block.shortcut, ProjectionShortcut)
    assert block.shortcut.bn is None and model.stem.bn is None
    block.eval()
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        pre = torch.relu(block.bn1(x))
        expected = block.conv2(torch.relu(block.bn2(block.conv1(pre)))) + block.shortcut.conv(pre)
        torch.testing.assert_close(block(x), expected)


def test_final_bn_option_and_wrn_head():
    assert isinstance(create_model("resnet18", width=0.125).head.bn, nn.BatchNorm2d)
    assert create_model("resnet18", width=0.125, final_bn=False).head.bn is None
    wrn = create_model("wrn16_4", width=0.25)
    assert isinstance(wrn.head.bn, nn.BatchNorm2d) and wrn.head.bn.num_features == wrn.spec.num_features
    assert all(c.bias is None for c in convs(wrn))
    assert all(c.bias is not None for c in convs(create_model("wrn16_4", width=0.25, conv_bias=True)))


def test_vgg_and_densenet_structure():
    vgg = create_model("vgg16", width=0.125)
    assert isinstance(vgg.stem, nn.Identity)
    assert [sum(isinstance(m, ConvBNReLU) for m in s) for s in vgg.stages] == [2, 2, 3, 3, 3]
    assert all(isinstance(s[-1], nn.MaxPool2d) for s in vgg.stages)
    dense = create_model("densenet_bc40_12")
    assert [sum(isinstance(m, DenseLayer) for m in s) for s in dense.stages] == [6, 6, 6]
    assert [isinstance(s[-1], Transition) for s in dense.stages] == [True, True, False]
    assert isinstance(dense.head.bn, nn.BatchNorm2d)
    plain = create_model("densenet40_12")
    assert plain.stages[0][0].conv1 is None and plain.stages[0][0].conv2.kernel_size == (3, 3)


def test_initialisation():
    torch.manual_seed(0)
    model = create_model("wrn16_4")
    conv = model.stages[2][1].conv1  # 256 x 256 x 3 x 3
    expected_std = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.02
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((b.weight == 1).all()) and bool((b.bias == 0).all()) for b in bns)
    assert bool((model.head.fc.bias == 0).all())
    vgg = create_model("vgg11")
    assert abs(vgg.head.fc.weight.std().item() - 0.01) < 0.001
    assert all(bool((c.bias == 0).all()) for c in convs(vgg))


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError, match=r"unknown model 'resnet21'; valid: .*resnet20.*wrn28_10"):
        create_model("resnet21")


def test_unknown_option_is_named():
    with pytest.raises(UserError, match=r"model 'resnet20' has no option\(s\) colour; valid: .*width"):
        create_model("resnet20", colour="red")


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("resnet", {"depth": 21}, "6n\\+2"),
        ("wrn", {"depth": 27}, "6n\\+4"),
        ("vgg", {"depth": 12}, "VGG depth"),
        ("densenet", {"depth": 101}, "6n\\+4"),
        ("preact_resnet", {"depth": 50}, "depth"),
        ("resnet20", {"shortcut": "B"}, "shortcut"),
        ("resnet20", {"width": 0}, "width"),
        ("resnet20", {"width": -1.0}, "width"),
        ("wrn16_4", {"dropout": 1.5}, "dropout"),
        ("resnet20", {"num_classes": 0}, "num_classes"),
    ],
)
def test_invalid_options_raise_user_error(name, kwargs, match):
    with pytest.raises(UserError, match=match):
        create_model(name, **kwargs)
