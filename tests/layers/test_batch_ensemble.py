"""BatchEnsemble layers: plain-layer limit, folded one-conv == per-member reference, rank-1 folding of a whole
backbone, per-member BatchNorm, initialisation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ensemblekit.layers.batch_ensemble import (
    BatchEnsembleConv2d,
    BatchEnsembleLayers,
    BatchEnsembleLinear,
    EnsembleBatchNorm2d,
    init_fast_weights_,
    member_rows,
    tile_batch,
)
from ensemblekit.models import VGGSpec, build_model, create_model

M, B = 3, 4


def _randomise(layer: nn.Module) -> None:
    with torch.no_grad():
        layer.r.normal_(1.0, 0.5)
        layer.s.normal_(1.0, 0.5)
        if layer.bias is not None:
            layer.bias.normal_()


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0)])
def test_conv_with_unit_fast_weights_and_shared_bias_is_the_plain_conv(stride, padding):
    torch.manual_seed(0)
    be = BatchEnsembleConv2d(M, 5, 7, 3, stride=stride, padding=padding, bias=True)
    plain = nn.Conv2d(5, 7, 3, stride=stride, padding=padding, bias=True)
    with torch.no_grad():
        be.weight.copy_(plain.weight)
        be.r.fill_(1.0)
        be.s.fill_(1.0)
        be.bias.copy_(plain.bias.expand(M, -1))
    x = torch.randn(M * B, 5, 9, 9)
    torch.testing.assert_close(be(x), plain(x), rtol=1e-5, atol=1e-5)


def test_linear_with_unit_fast_weights_and_shared_bias_is_the_plain_linear():
    torch.manual_seed(0)
    be = BatchEnsembleLinear(M, 6, 4, bias=True)
    plain = nn.Linear(6, 4)
    with torch.no_grad():
        be.weight.copy_(plain.weight)
        be.r.fill_(1.0)
        be.s.fill_(1.0)
        be.bias.copy_(plain.bias.expand(M, -1))
    x = torch.randn(M * B, 6)
    torch.testing.assert_close(be(x), plain(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_folded_conv_equals_the_per_member_loop(bias):
    torch.manual_seed(1)
    be = BatchEnsembleConv2d(M, 4, 6, 3, stride=2, padding=1, bias=bias)
    _randomise(be)
    x = torch.randn(M * B, 4, 8, 8)
    out = be(x)
    for i in range(M):
        xi = x[i * B : (i + 1) * B]
        ref = F.conv2d(xi * be.r[i].view(1, -1, 1, 1), be.weight, None, 2, 1) * be.s[i].view(1, -1, 1, 1)
        via_weight = F.conv2d(xi, be.member_weight(i), None, 2, 1)  # W_i = W ⊙ (s_i r_iᵀ)
        if bias:
            ref = ref + be.bias[i].view(1, -1, 1, 1)
            via_weight = via_weight + be.bias[i].view(1, -1, 1, 1)
        torch.testing.assert_close(out[i * B : (i + 1) * B], ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[i * B : (i + 1) * B], via_weight, rtol=1e-5, atol=1e-5)


def test_folded_linear_equals_the_per_member_loop():
    torch.manual_seed(2)
    be = BatchEnsembleLinear(M, 5, 3)
    _randomise(be)
    x = torch.randn(M * B, 5)
    out = be(x)
    for i in range(M):
        xi = x[i * B : (i + 1) * B]
        ref = ((xi * be.r[i]) @ be.weight.T) * be.s[i] + be.bias[i]
        torch.testing.assert_close(out[i * B : (i + 1) * B], ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[i * B : (i + 1) * B], F.linear(xi, be.member_weight(i), be.bias[i]))


@pytest.mark.parametrize(("execution", "rows"), [("folded", [M * B]), ("member_weights", [B] * M)])
def test_folded_execution_runs_one_convolution_member_weights_one_per_member(monkeypatch, execution, rows):
    be = BatchEnsembleConv2d(M, 4, 6, 3, padding=1, conv_execution=execution)
    calls, real = [], F.conv2d

    def counting(x, *args, **kwargs):
        calls.append(x.shape[0])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", counting)
    be(torch.randn(M * B, 4, 8, 8))
    assert calls == rows


def test_rows_must_be_a_multiple_of_the_members():
    be = BatchEnsembleConv2d(M, 4, 6, 3, padding=1)
    with pytest.raises(ValueError, match="tiled"):
        be(torch.randn(M * B + 1, 4, 8, 8))
    assert torch.equal(member_rows(torch.tensor([[1.0], [2.0]]), 4).flatten(), torch.tensor([1.0, 1, 2, 2]))


def _fold_member(be_net: nn.Module, plain: nn.Module, i: int) -> None:
    """Load member i of a BatchEnsemble backbone into a plain backbone of the same spec."""
    plain_modules = dict(plain.named_modules())
    with torch.no_grad():
        for name, mod in be_net.named_modules():
            target = plain_modules[name]
            if isinstance(mod, BatchEnsembleConv2d | BatchEnsembleLinear):
                target.weight.copy_(mod.member_weight(i))
                if mod.bias is not None:
                    target.bias.copy_(mod.bias[i])
                else:
                    assert target.bias is None
            elif isinstance(mod, EnsembleBatchNorm2d):
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(target, key).copy_(getattr(mod, key)[i])
            elif isinstance(mod, nn.BatchNorm2d):
                target.load_state_dict(mod.state_dict())


def _randomise_network(net: nn.Module) -> None:
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, BatchEnsembleConv2d | BatchEnsembleLinear):
                _randomise(mod)
            elif isinstance(mod, nn.BatchNorm2d | EnsembleBatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.1)
                mod.running_mean.normal_(0.0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)


SPECS = {
    "resnet8_projection": lambda: create_model("resnet8", width=0.5).spec,
    "wrn_preact_final_bn": lambda: create_model("wrn16_4", width=0.25).spec,
    "vgg_conv_bias": lambda: VGGSpec(conv_channels=((4,), (8, 8)), num_classes=5),
}


@pytest.mark.parametrize("ensemble_bn", [False, True])
@pytest.mark.parametrize("spec_name", list(SPECS))
def test_each_member_is_the_plain_backbone_with_rank1_folded_weights(spec_name, ensemble_bn):
    torch.manual_seed(3)
    spec = SPECS[spec_name]()
    be_net = build_model(spec, layers=BatchEnsembleLayers(M, ensemble_bn=ensemble_bn)).eval()
    _randomise_network(be_net)
    assert not any(isinstance(m, nn.Conv2d | nn.Linear) for m in be_net.modules())
    x = torch.randn(2, spec.in_channels, 32, 32)
    out = be_net(tile_batch(x, M)).view(M, 2, -1)
    for i in range(M):
        plain = build_model(spec).eval()
        _fold_member(be_net, plain, i)
        torch.testing.assert_close(out[i], plain(x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out[0], out[1])


def test_ensemble_bn_keeps_per_member_statistics():
    torch.manual_seed(4)
    bn = EnsembleBatchNorm2d(M, 5)
    scales = torch.tensor([1.0, 3.0, 10.0])
    x = torch.randn(M, B, 5, 6, 6) * scales.view(M, 1, 1, 1, 1) + scales.view(M, 1, 1, 1, 1)
    y = bn(x.reshape(M * B, 5, 6, 6))
    for i in range(M):
        ref = nn.BatchNorm2d(5)
        torch.testing.assert_close(y[i * B : (i + 1) * B], ref(x[i]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bn.running_mean[i], ref.running_mean)
        torch.testing.assert_close(bn.running_var[i], ref.running_var)
    means = bn.running_mean.mean(dim=1)
    assert means[0] < means[1] < means[2]
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    with torch.no_grad():
        bn.weight[1].fill_(2.0)
    z = bn(x.reshape(M * B, 5, 6, 6))
    expected = (x[1] - bn.running_mean[1].view(1, -1, 1, 1)) / (bn.running_var[1].view(1, -1, 1, 1) + 1e-5).sqrt()
    torch.testing.assert_close(z[B : 2 * B], 2.0 * expected, rtol=1e-5, atol=1e-5)


def test_factory_shares_bn_unless_ensemble_bn():
    shared = BatchEnsembleLayers(M).batchnorm2d(8)
    per_member = BatchEnsembleLayers(M, ensemble_bn=True).batchnorm2d(8)
    assert type(shared) is nn.BatchNorm2d and shared.weight.shape == (8,)
    assert isinstance(per_member, EnsembleBatchNorm2d) and per_member.weight.shape == (M, 8)


def test_fast_weight_inits():
    torch.manual_seed(5)
    t = init_fast_weights_(torch.empty(200, 500), "normal", std=0.5)
    assert abs(t.mean().item() - 1.0) < 0.01 and abs(t.std().item() - 0.5) < 0.01
    signs = init_fast_weights_(torch.empty(200, 500), "random_sign", sign_prob=0.75)
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    assert abs((signs > 0).float().mean().item() - 0.75) < 0.01
    conv = BatchEnsembleConv2d(M, 64, 64, 3, bias=True)
    assert abs(conv.weight.std().item() - (2.0 / (64 * 9)) ** 0.5) < 0.005  # He-normal, fan_in
    assert conv.weight.abs().max() <= 2 * (2.0 / (64 * 9)) ** 0.5 / 0.8796 + 1e-6  # truncated at 2 sigma
    assert torch.equal(conv.bias, torch.zeros(M, 64))


def test_tile_batch_orders_members_and_keeps_channels_last():
    x = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    tiled = tile_batch(x, 3)
    assert tiled[:, 0, 0, 0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert tiled.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "bias,stride,padding,channels_last", [(False, 1, 1, False), (True, 2, 1, True), (True, 1, 0, False)]
)
def test_fused_backward_equals_plain_autograd(bias, stride, padding, channels_last):
    torch.manual_seed(6)
    layer = BatchEnsembleConv2d(M, 4, 5, 3, stride=stride, padding=padding, bias=bias).double()
    _randomise(layer)
    x = torch.randn(M * B, 4, 7, 7, dtype=torch.float64)
    if channels_last:
        layer = layer.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    grads = []
    for fused, execution in ((True, "folded"), (False, "folded"), (False, "member_weights")):
        layer.fused, layer.conv_execution = fused, execution
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        out = layer(xi)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view(out.shape)).sum().backward()
        grads.append([xi.grad] + [p.grad for p in layer.parameters()])
    assert len(grads[0]) == (5 if bias else 4)
    for fused_grad, plain_grad, member_grad in zip(*grads):
        torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(member_grad, plain_grad, rtol=1e-10, atol=1e-12)


def test_fused_layer_without_input_gradient_and_under_autocast():
    torch.manual_seed(7)
    layer = BatchEnsembleConv2d(M, 3, 4, 3, padding=1)
    x = torch.randn(M * B, 3, 6, 6)  # the stem: no gradient for the input
    layer(x).square().sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)  # falls back to the plain composition under autocast
    torch.testing.assert_close(out.float(), layer(x), rtol=0.05, atol=0.05)


def test_fused_network_step_equals_plain_autograd():
    torch.manual_seed(8)
    net = build_model(create_model("resnet8", width=0.5).spec, layers=BatchEnsembleLayers(M))
    x, y = torch.randn(M * 2, 3, 16, 16), torch.randint(0, 10, (M * 2,))
    grads = []
    for fused, execution in ((True, "folded"), (False, "folded"), (False, "member_weights")):
        for mod in net.modules():
            if isinstance(mod, BatchEnsembleConv2d):
                mod.fused, mod.conv_execution = fused, execution
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b, c in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(c, b, rtol=1e-4, atol=1e-6)
