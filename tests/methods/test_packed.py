"""``packed`` (Packed-Ensembles, Laurent et al. 2023): reference equivalence, subgroups, costs, checkpoints."""

import json

import pytest
import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.layers.packed_ensemble import PackedConv2d, PackedLinear, effective_subgroups
from ensemblekit.methods.packed import build_packed_network, member_spec
from ensemblekit.metrics import inference_flops
from ensemblekit.models import build_model, create_model
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import build_ensemble, describe_costs, evaluate, train
from tests.conftest import tiny_config

# (model section, packed options): the CIFAR ResNet (projection and option-A shortcuts), the pre-activation
# ResNet-18 and a WideResNet, narrow enough for a CPU test.
BACKBONES = [
    ({"name": "resnet8", "width": 0.5}, {}),
    ({"name": "resnet8", "kwargs": {"shortcut": "zero_pad"}}, {}),
    ({"name": "resnet18", "width": 0.125}, {}),
    ({"name": "wrn16_4", "width": 0.25, "dropout": 0.3}, {}),
]


def _build(model=None, **options):
    cfg = tiny_config(method={"name": "packed", **options}, **({"model": model} if model else {}))
    return build_ensemble(config_from_dict(cfg), 10, 192)


@torch.no_grad()
def _randomise(net: nn.Module) -> None:
    """Random BatchNorm affine parameters and running statistics, so that every slice matters."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.2)
            m.running_mean.normal_(0.0, 0.2)
            m.running_var.uniform_(0.5, 1.5)


@torch.no_grad()
def _copy_member_by_chunks(packed: nn.Module, i: int, members: int, plain: nn.Module) -> None:
    """Member i's weights: the i-th of M equal chunks along dim 0 of every packed tensor (a classifier: row i)."""
    for p_mod, q_mod in zip(packed.modules(), plain.modules(), strict=True):
        tensors = [*p_mod.named_parameters(recurse=False), *p_mod.named_buffers(recurse=False)]
        for key, value in tensors:
            out = getattr(q_mod, key)
            if key == "num_batches_tracked":
                out.copy_(value)
            elif isinstance(p_mod, PackedLinear):
                out.copy_(value[i])
            else:
                out.copy_(value.chunk(members, dim=0)[i])


@pytest.mark.parametrize(("model", "options"), BACKBONES, ids=lambda v: str(v))
def test_packed_network_equals_m_independent_narrower_networks_in_float64(model, options):
    _, ens = _build(model, members=3, alpha=2.0, gamma=1, **options)
    ens.double()
    _randomise(ens)
    spec = ens.net.spec
    plains = [build_model(spec).double() for _ in range(3)]
    for i, plain in enumerate(plains):
        _copy_member_by_chunks(ens.net, i, 3, plain)
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)

    ens.eval()
    for p in plains:
        p.eval()
    out = ens(x)
    assert out.shape == (3, 5, 10)
    torch.testing.assert_close(out, torch.stack([p(x) for p in plains]), rtol=1e-10, atol=1e-10)

    # train mode: every member normalises with its own batch statistics and updates its own running statistics
    ens.train()
    for p in plains:
        p.train()
    ens.net.apply(lambda m: setattr(m, "p", 0.0) if isinstance(m, nn.Dropout) else None)
    for p in plains:
        p.apply(lambda m: setattr(m, "p", 0.0) if isinstance(m, nn.Dropout) else None)
    torch.testing.assert_close(ens(x), torch.stack([p(x) for p in plains]), rtol=1e-10, atol=1e-10)
    bn = [m for m in ens.net.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    last = [[m for m in p.modules() if isinstance(m, nn.BatchNorm2d)][-1] for p in plains]
    torch.testing.assert_close(bn.running_mean, torch.cat([m.running_mean for m in last]))


def test_member_channels_are_alpha_over_m_of_the_backbone():
    _, ens = _build({"name": "wrn16_4", "width": 1.0}, members=4, alpha=2.0)
    plain = create_model("wrn16_4").spec
    assert ens.net.spec.stage_channels == tuple(c // 2 for c in plain.stage_channels)  # 64 128 256 -> 32 64 128
    assert ens.net.spec.stem_channels == 8
    assert member_spec(plain, 3.0, 4).stage_channels == (48, 96, 192)
    stem, fc = ens.net.stem.conv, ens.net.head.fc
    assert isinstance(stem, PackedConv2d) and stem.groups == 1 and stem.weight.shape == (32, 3, 3, 3)  # shared input
    assert isinstance(fc, PackedLinear) and fc.weight.shape == (4, 10, 128)
    assert all(m.groups >= 4 for m in ens.modules() if isinstance(m, nn.Conv2d) and m is not stem)


def test_effective_subgroups_follow_divisibility_and_the_minimum_group_width():
    assert effective_subgroups(128, 128, 2, 64) == 2
    assert effective_subgroups(64, 64, 2, 64) == 1  # 32 input channels per subgroup < 64
    assert effective_subgroups(96, 96, 4, 8) == 4
    assert effective_subgroups(30, 30, 4, 1) == 3  # 4 does not divide 30
    assert effective_subgroups(128, 128, 1, 1) == 1


def test_subgroups_on_second_convs_and_projections_only_and_equivalence_to_grouped_members():
    _, ens = _build({"name": "resnet8"}, members=2, gamma=2, min_group_channels=1)
    for block in (b for stage in ens.net.stages for b in stage):
        assert block.conv1.subgroups == 1 and block.conv1.groups == 2  # mixes a member's subgroups
        assert block.conv2.subgroups == 2 and block.conv2.groups == 4
        if block.shortcut is not None:
            assert block.shortcut.conv.groups == 4
    assert ens.net.stem.conv.groups == 1
    ens.double()
    _randomise(ens)
    ens.eval()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    members = [ens.member_network(i).double().eval() for i in range(2)]
    assert members[0].stages[0][0].conv2.groups == 2  # one member with the same subgroups
    torch.testing.assert_close(ens(x), torch.stack([m(x) for m in members]), rtol=1e-10, atol=1e-10)


def test_subgroups_reduce_parameters_by_gamma_in_the_grouped_layers():
    _, dense = _build({"name": "resnet8"}, members=2, gamma=1)
    _, grouped = _build({"name": "resnet8"}, members=2, gamma=2, min_group_channels=1)
    a, b = dense.net.stages[2][0].conv2, grouped.net.stages[2][0].conv2
    assert a.weight.numel() == 2 * b.weight.numel()


def test_params_and_flops_are_m_times_one_member_and_about_one_backbone():
    method, ens = _build({"name": "resnet20"}, members=4, alpha=2.0, gamma=1)
    member = build_model(ens.net.spec)
    costs = describe_costs(method, ens, (3, 32, 32))
    assert costs["params"] == costs["unique_params"] == 4 * sum(p.numel() for p in member.parameters())
    assert costs["inference_flops"] == 4 * inference_flops(member, (1, 3, 32, 32))
    # α²/M = 1 on every inner conv; the stem and classifier cost α = 2x theirs
    assert costs["inference_flops_vs_single"] == pytest.approx(1.0, abs=0.03)
    assert costs["params"] == pytest.approx(costs["single_params"], rel=0.03)


def test_one_grouped_conv_is_counted_at_its_grouped_flops():
    conv = PackedConv2d(8, 16, 3, members=4, subgroups=2, padding=1)
    flops = inference_flops(conv, (1, 32, 8, 8))
    assert flops == 2 * 8 * 8 * (4 * 16) * (8 // 2) * 9  # 2 · H·W · M·c_out · (c_in/γ) · k²


def test_init_matches_a_plain_member_of_the_same_width():
    torch.manual_seed(0)
    conv = PackedConv2d(64, 64, 3, members=4)
    expected = (2.0 / (64 * 9)) ** 0.5  # Kaiming fan_out of one member's conv
    for i in range(4):
        assert conv.weight[conv.member_rows(i)].std().item() == pytest.approx(expected, rel=0.05)


def test_member_state_round_trip_and_members_are_independent():
    _, ens = _build(members=3)
    ens.eval()
    x = torch.randn(4, 3, 16, 16)
    before = ens(x)
    ens.load_member_state(2, ens.member_state(0))
    after = ens(x)
    torch.testing.assert_close(after[2], after[0])  # member 2 now is member 0 (running stats are not parameters)
    torch.testing.assert_close(after[:2], before[:2])  # the others did not move
    torch.testing.assert_close(ens.member_forward(1, x), after[1])


def test_recipe_is_one_joint_stage_on_the_single_models_data_order():
    method, ens = _build(members=2)
    (stage,) = method.recipe(ens)
    assert stage.module is ens and stage.member_loss == "mean" and stage.data_seed == method.member_seed(0)


def test_other_backbones_are_refused_in_one_line():
    with pytest.raises(UserError, match="packed supports residual backbones") as err:
        _build({"name": "vgg11", "width": 0.25})
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="unknown option"):
        _build(width=2)
    with pytest.raises(UserError, match="gamma"):
        _build(gamma=0)


def test_build_refuses_unsupported_spec_directly():
    with pytest.raises(UserError, match="residual"):
        build_packed_network(create_model("densenet40_12").spec, 2)


def test_end_to_end_run_and_checkpoint_round_trip(tmp_path):
    cfg = config_from_dict(tiny_config(method={"name": "packed", "members": 2}, train={"epochs": 1}))
    record = train(cfg, tmp_path / "run", quiet=True)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["method"] == "packed" and saved["num_members"] == 2 and len(saved["members"]) == 2
    costs = record["costs"]
    assert costs["params"] == costs["unique_params"]
    assert costs["train_epoch_equivalents"] == pytest.approx(costs["inference_flops_vs_single"], rel=1e-6)
    again = evaluate(tmp_path / "run")  # rebuilt from config.yaml + model.pt
    for key in ("accuracy", "nll", "ece"):
        assert again["metrics"][key] == pytest.approx(saved["metrics"][key], abs=1e-6), key
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    assert state["net.head.fc.weight"].shape[0] == 2


def test_interpolation_between_members_equals_interpolating_the_stand_alone_networks():
    from ensemblekit.analysis import interpolate_members
    from tests.analysis.test_interpolation import MEAN, STD, _data, _own_train_bn_scores

    _, ens = _build(members=3)
    _randomise(ens)
    data = _data()
    points = interpolate_members(ens, 0, 2, data, MEAN, STD, points=3, batch_size=16)
    a, b = ens.member_network(0), ens.member_network(2)
    middle = ens.member_network(0)
    with torch.no_grad():
        for pm, pa, pb in zip(middle.parameters(), a.parameters(), b.parameters(), strict=True):
            pm.copy_((pa + pb) / 2)
    for point, net in zip(points, (a, middle, b), strict=True):
        acc, nll = _own_train_bn_scores(net, net, data, 16)
        assert point["accuracy"] == pytest.approx(acc, abs=1e-9) and point["nll"] == pytest.approx(nll, rel=1e-5)
