"""Function-preserving transforms (Net2Net), MotherNet specs and clustering (MotherNets, methods.md 3(e))."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.models import build_model, create_model
from ensemblekit.models.densenet import densenet_spec
from ensemblekit.models.resnet_cifar import resnet_spec
from ensemblekit.models.transforms import (
    ChannelMap,
    cluster_architectures,
    hatch,
    identity_conv_,
    mother_spec,
    parameter_share,
    perturb_,
    refine_identity_bns,
    spec_parameters,
    transfer_bn,
    transfer_conv,
)
from ensemblekit.models.vgg import vgg_spec

TOL = 1e-5


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / a.detach().abs().max())


@torch.no_grad()
def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN parameters and statistics, as after training (else BN hides mapping errors)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return model


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_channel_map_counts_and_concatenation():
    m = ChannelMap.random(4, 9, _gen())
    assert m.index[:4].tolist() == [0, 1, 2, 3] and m.counts.sum() == 9 and (m.counts >= 1).all()
    assert torch.equal(m.divisor, m.counts.double()[m.index])
    cat = ChannelMap.cat([ChannelMap.identity(2), ChannelMap.new(3), ChannelMap.identity(1)])
    assert cat.index.tolist() == [0, 1, -1, -1, -1, 2] and cat.source_size == 3
    with pytest.raises(UserError, match="at least as wide"):
        ChannelMap.random(5, 3, _gen())
    with pytest.raises(ValueError, match="every source channel"):
        ChannelMap(torch.tensor([0, 0]), 2)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_widen_conv_bn_relu_conv_preserves_function(mode):
    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1))
    wide = nn.Sequential(nn.Conv2d(3, 7, 3, padding=1), nn.BatchNorm2d(7), nn.ReLU(), nn.Conv2d(7, 5, 3, padding=1))
    _randomise_bn(small)
    g = ChannelMap.random(4, 7, _gen())
    assert (g.counts > 1).any()  # some unit is replicated, so the division matters
    transfer_conv(small[0], wide[0], ChannelMap.identity(3), g)
    transfer_bn(small[1], wide[1], g)
    transfer_conv(small[3], wide[3], g, ChannelMap.identity(5))
    small.train(mode == "train")
    wide.train(mode == "train")
    x = torch.randn(8, 3, 6, 6)
    assert _rel_err(small(x), wide(x)) < TOL
    if mode == "train":  # the running statistics were updated identically too
        assert torch.allclose(wide[1].running_mean, small[1].running_mean[g.index], atol=1e-6)


def test_widening_without_division_is_not_preserving():
    """The test above can fail: forgetting the 1/cnt division changes the output."""
    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1))
    wide = nn.Sequential(nn.Conv2d(3, 7, 3, padding=1), nn.ReLU(), nn.Conv2d(7, 5, 3, padding=1))
    g = ChannelMap.random(4, 7, _gen())
    transfer_conv(small[0], wide[0], ChannelMap.identity(3), g)
    no_division = ChannelMap(g.index, 4)
    with torch.no_grad():
        wide[2].weight.copy_(small[2].weight[:, no_division.index])
        wide[2].bias.copy_(small[2].bias)
    x = torch.randn(2, 3, 6, 6)
    assert _rel_err(small(x), wide(x)) > 1e-2


@pytest.mark.parametrize("widen", [False, True])
def test_deepen_by_identity_conv_after_relu(widen):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    q = 6 if widen else 4
    deep = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, q, 3, padding=1), nn.ReLU(), nn.Conv2d(q, 2, 1)
    )
    ident = ChannelMap.identity(4)
    out = ChannelMap.random(4, q, _gen()) if widen else ident
    transfer_conv(base[0], deep[0], ChannelMap.identity(3), ident)
    identity_conv_(deep[2], ident, out)
    transfer_conv(base[2], deep[4], out, ChannelMap.identity(2))
    assert deep[2].weight[0, 0, 1, 1] == 1 and deep[2].weight[0, 0].sum() == 1  # centred at index 1 of a 3x3
    x = torch.randn(4, 3, 5, 5)
    assert _rel_err(base(x), deep(x)) < TOL


@pytest.mark.parametrize("stride", [1, 2])
def test_kernel_enlargement_3_to_5(stride):
    torch.manual_seed(0)
    k3 = nn.Conv2d(3, 4, 3, stride=stride, padding=1)
    k5 = nn.Conv2d(3, 4, 5, stride=stride, padding=2)
    transfer_conv(k3, k5, ChannelMap.identity(3), ChannelMap.identity(4))
    assert k5.weight[:, :, 0].abs().sum() == 0 and k5.weight[:, :, :, 4].abs().sum() == 0
    x = torch.randn(2, 3, 9, 9)
    assert _rel_err(k3(x), k5(x)) < TOL


def _check_hatch(mother: nn.Module, member: nn.Module, modes=("eval", "train"), seed: int = 1) -> None:
    _randomise_bn(mother)
    hatch(mother, member, _gen(seed))
    x = torch.randn(4, mother.spec.in_channels, 32, 32)
    for mode in modes:
        mother.train(mode == "train")
        member.train(mode == "train")
        with torch.no_grad():
            assert _rel_err(mother(x), member(x)) < TOL, mode


@pytest.mark.parametrize("depth", [32, 56])
def test_hatch_resnet20_into_deeper_resnet_at_1_5x_width(depth):
    torch.manual_seed(0)
    mother, member = create_model("resnet20"), create_model(f"resnet{depth}", width=1.5)
    _check_hatch(mother, member)
    added = member.stages[0][3]  # a zero-initialised residual block (post-activation: bn2 gamma = 0)
    assert added.bn2.weight.abs().sum() == 0


def test_hatch_zero_pad_resnet_and_wide_resnet():
    torch.manual_seed(0)
    _check_hatch(create_model("resnet8", width=0.5, shortcut="zero_pad"), create_model("resnet14", shortcut="zero_pad"))
    _check_hatch(create_model("wrn16_4", width=0.25), create_model("wrn22_2", width=0.5))


def test_hatch_vgg11_style_mother_into_vgg16():
    torch.manual_seed(0)
    specs = [vgg_spec(11, width=0.125), vgg_spec(16, width=0.25)]
    mother = build_model(mother_spec(specs))
    member = build_model(specs[1])
    _check_hatch(mother, member, modes=("eval",))


def test_vgg_identity_bn_statistics_from_data_keep_eval_exactness_and_help_train_mode():
    torch.manual_seed(0)
    mother, member = create_model("vgg11", width=0.125), create_model("vgg13", width=0.125)
    _randomise_bn(mother)
    new_bns = hatch(mother, member, _gen())
    assert len(new_bns) == 2  # vgg13 adds one layer to each of the first two stages
    x = torch.randn(16, 3, 32, 32)

    def train_mode_error() -> float:  # on copies: a train-mode forward updates the running statistics
        a, b = copy.deepcopy(mother).train(), copy.deepcopy(member).train()
        with torch.no_grad():
            return _rel_err(a(x), b(x))

    err_before = train_mode_error()
    refine_identity_bns(member, new_bns, [x])
    assert new_bns[0].running_var.min() > 0 and not torch.allclose(new_bns[0].running_var, torch.ones(1))
    with torch.no_grad():
        assert _rel_err(mother.eval()(x), member.eval()(x)) < TOL
    assert err_before > 1e-2 and train_mode_error() < TOL  # exact in train mode on the batch it was fitted to


def test_hatch_small_densenet_wider_and_deeper():
    torch.manual_seed(0)
    mother = build_model(densenet_spec(16, 6, width=1.0))  # 2 bottleneck layers per block
    member = build_model(densenet_spec(28, 9))  # 4 layers per block, growth 9
    _check_hatch(mother, member)
    plain = build_model(densenet_spec(10, 4, bottleneck=False, compression=1.0))
    _check_hatch(plain, build_model(densenet_spec(13, 6, bottleneck=False, compression=1.0)))


def test_mothernet_of_vgg_11_13_16():
    specs = [vgg_spec(11, width=0.5), vgg_spec(13, width=0.75), vgg_spec(16)]
    m = mother_spec(specs)
    assert (
        m.conv_channels == vgg_spec(11, width=0.5).conv_channels == ((32,), (64,), (128, 128), (256, 256), (256, 256))
    )
    assert m.stage_layers == (1, 1, 2, 2, 2)


def test_mothernet_of_resnets_takes_minima():
    specs = [resnet_spec(d, width=w) for d, w in [(20, 1.5), (32, 1.0), (56, 0.5)]]
    m = mother_spec(specs)
    assert m.stage_blocks == (3, 3, 3) and m.stage_channels == (8, 16, 32) and m.stem_channels == 8
    assert spec_parameters(m) < min(spec_parameters(s) for s in specs)
    assert 0 < parameter_share(specs) < 1
    assert parameter_share([specs[0]]) == 1.0


def test_incompatible_architectures_are_refused():
    with pytest.raises(UserError, match="incompatible"):
        mother_spec([create_model("resnet20").spec, create_model("vgg11").spec])
    with pytest.raises(UserError, match="incompatible"):  # same family, different block types
        mother_spec([create_model("resnet20").spec, create_model("resnet20", shortcut="zero_pad").spec])


def test_clustering_extremes_and_families():
    specs = [resnet_spec(20, width=0.5), vgg_spec(11, width=0.25), resnet_spec(56), vgg_spec(16, width=0.5)]
    specs.append(resnet_spec(32, width=0.5))
    assert cluster_architectures(specs, 5) == [[0], [1], [2], [3], [4]]
    assert cluster_architectures(specs, 2) == [[0, 2, 4], [1, 3]]  # families never merge
    with pytest.raises(UserError, match="incompatible"):
        cluster_architectures(specs, 1)
    resnets = [specs[0], specs[2], specs[4]]
    assert cluster_architectures(resnets, 1) == [[0, 1, 2]]
    assert cluster_architectures(resnets, 2) == [[0, 2], [1]]  # the two x0.5 nets share the most
    with pytest.raises(UserError, match="between 1 and"):
        cluster_architectures(resnets, 4)


def _disagreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x).argmax(-1) != b(x).argmax(-1)).double().mean())


def test_noise_makes_hatched_members_disagree_more():
    torch.manual_seed(0)
    mother = create_model("resnet8", width=0.25).eval()
    x = torch.randn(128, 3, 16, 16)
    scores = {}
    for noise in (0.0, 0.05):
        a, b = create_model("resnet8", width=0.5).eval(), create_model("resnet8", width=0.5).eval()
        for seed, member in ((1, a), (2, b)):
            gen = _gen(seed)
            hatch(mother, member, gen)
            perturb_(member, noise, gen)
        scores[noise] = _disagreement(a, b, x)
    assert scores[0.0] == 0.0 and scores[0.05] > 0.0
