"""``batch_ensemble``: the ensemble, parameter groups, per-member BN, costs and an end-to-end run."""

import json
import math

import pytest
import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.layers.batch_ensemble import BatchEnsembleConv2d, BatchEnsembleLinear, EnsembleBatchNorm2d
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import build_ensemble, describe_costs, train
from ensemblekit.training.losses import member_cross_entropy
from ensemblekit.training.optim import build_optimizer
from tests.conftest import tiny_config


def _build(**options):
    cfg = config_from_dict(tiny_config(method={"name": "batch_ensemble", **options}))
    return build_ensemble(cfg, 10, 192)


def test_ensemble_returns_member_logits_of_the_tiled_batch():
    _, ens = _build(members=3)
    ens.eval()
    x = torch.randn(5, 3, 16, 16)
    out = ens(x)
    assert out.shape == (3, 5, 10) and ens.num_members == 3
    torch.testing.assert_close(out, ens.net(torch.cat([x, x, x])).view(3, 5, 10))
    assert not torch.allclose(out[0], out[1])  # members differ through their fast weights
    torch.testing.assert_close(ens(x[:2]), out[:, :2], rtol=1e-5, atol=1e-5)  # eval: rows are independent


def test_every_conv_and_the_classifier_are_batch_ensemble_layers():
    _, ens = _build()
    modules = list(ens.modules())
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in modules)
    assert isinstance(ens.net.stem.conv, BatchEnsembleConv2d) and isinstance(ens.net.head.fc, BatchEnsembleLinear)
    shortcuts = [m for n, m in ens.named_modules() if n.endswith("shortcut.conv")]
    assert shortcuts and all(isinstance(m, BatchEnsembleConv2d) for m in shortcuts)
    assert all(type(m) is nn.BatchNorm2d for m in modules if isinstance(m, nn.modules.batchnorm._NormBase))


def test_param_groups_exclude_fast_weights_from_decay_and_scale_their_lr():
    method, ens = _build(fast_lr_mult=0.5)
    stage = method.recipe(ens)[0]
    assert stage.module is ens and stage.member_loss == "mean" and stage.prepare_batch is None
    opt = build_optimizer(stage.param_groups(ens), stage.optim)
    wd, lr = method.cfg.train.weight_decay, method.cfg.train.lr
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    for mod in ens.modules():
        if isinstance(mod, BatchEnsembleConv2d | BatchEnsembleLinear):
            for fast in (mod.r, mod.s):
                assert by_param[id(fast)]["weight_decay"] == 0.0
                assert by_param[id(fast)]["lr"] == pytest.approx(0.5 * lr)
            assert by_param[id(mod.weight)]["weight_decay"] == wd and by_param[id(mod.weight)]["lr"] == lr
        if isinstance(mod, nn.BatchNorm2d):
            assert by_param[id(mod.weight)]["weight_decay"] == wd and by_param[id(mod.weight)]["lr"] == lr
    bias = by_param[id(ens.net.head.fc.bias)]
    assert bias["weight_decay"] == wd and bias["lr"] == pytest.approx(0.5 * lr)  # UB: decayed, fast lr
    assert len(by_param) == sum(1 for _ in ens.parameters())
    assert {g["name"] for g in opt.param_groups} == {"slow", "bn", "fast", "bias"}


def test_decay_bn_and_bias_false_removes_their_decay_only():
    cfg = config_from_dict(
        tiny_config(method={"name": "batch_ensemble"}, train={"decay_bn_and_bias": False, "weight_decay": 1e-3})
    )
    method, ens = build_ensemble(cfg, 10, 192)
    groups = {g["name"]: g for g in method.recipe(ens)[0].param_groups(ens)}
    assert "weight_decay" not in groups["slow"] and groups["bn"]["weight_decay"] == 0.0
    assert groups["bias"]["weight_decay"] == 0.0 and groups["fast"]["weight_decay"] == 0.0


def test_training_loss_is_the_mean_ce_over_all_tiled_rows():
    method, ens = _build(members=2)
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([1, 2, 3])
    out = ens(x)
    expected = torch.nn.functional.cross_entropy(out.reshape(6, 10), y.repeat(2))
    torch.testing.assert_close(member_cross_entropy(out, y, method.recipe(ens)[0].member_loss), expected)


def test_ensemble_bn_gives_per_member_running_statistics():
    _, ens = _build(members=3, ensemble_bn=True)
    bns = [m for m in ens.modules() if isinstance(m, EnsembleBatchNorm2d)]
    assert bns and not any(type(m) is nn.BatchNorm2d for m in ens.modules())
    stem_bn = ens.net.stem.bn
    assert torch.equal(stem_bn.running_mean[0], stem_bn.running_mean[1])
    scale = torch.tensor([1.0, 4.0, 16.0]).view(3, 1, 1, 1, 1)
    x = (torch.randn(3, 4, 3, 16, 16) * scale + scale).view(12, 3, 16, 16)  # member i sees scale s_i
    ens.train()
    ens.net(x)  # a training forward updates the running statistics
    for bn in bns:
        assert not torch.allclose(bn.running_mean[0], bn.running_mean[1])
        assert not torch.allclose(bn.running_mean[1], bn.running_mean[2])


def test_params_count_the_stored_size_and_inference_flops_are_m_times_single():
    method, ens = _build(members=4)
    costs = describe_costs(method, ens)
    assert costs["params"] == costs["unique_params"] == sum(p.numel() for p in ens.parameters())
    fast = 0
    for m in ens.modules():
        if isinstance(m, BatchEnsembleConv2d | BatchEnsembleLinear):
            fast += m.r.numel() + m.s.numel() + (m.bias[1:].numel() if m.bias is not None else 0)
    assert costs["params"] == costs["single_params"] + fast
    assert costs["params"] < 1.1 * costs["single_params"]
    assert costs["inference_flops_vs_single"] == pytest.approx(4.0)


def test_options_are_validated():
    with pytest.raises(UserError, match="fast_weight_init"):
        _build(fast_weight_init="uniform")
    with pytest.raises(UserError, match="unknown option"):
        _build(fast_lr=0.5)


def test_random_sign_init_option():
    _, ens = _build(fast_weight_init="random_sign")
    assert set(ens.net.stem.conv.r.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("ensemble_bn", [False, True])
def test_end_to_end_run(tmp_path, ensemble_bn):
    method = {"name": "batch_ensemble", "members": 4, "ensemble_bn": ensemble_bn}
    cfg = config_from_dict(tiny_config(method=method, train={"epochs": 1}))
    record = train(cfg, tmp_path / "run", quiet=True)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["method"] == "batch_ensemble" and saved["num_members"] == 4 and len(saved["members"]) == 4
    assert all(math.isfinite(v) for v in saved["metrics"].values() if isinstance(v, float))
    costs = record["costs"]
    assert costs["params"] == costs["unique_params"]
    assert costs["inference_flops_vs_single"] == pytest.approx(4.0)
    assert costs["train_epoch_equivalents"] == pytest.approx(4.0, rel=1e-6)  # M x a single epoch


def test_fused_backward_option_selects_the_convolution_path():
    _, auto = _build()
    _, plain = _build(fused_backward=False)
    _, fused = _build(fused_backward=True)
    for ens, expected in ((auto, "auto"), (plain, False), (fused, True)):
        convs = [m for m in ens.modules() if isinstance(m, BatchEnsembleConv2d)]
        assert convs and all(m.fused is expected or m.fused == expected for m in convs)
    with pytest.raises(UserError, match="fused_backward"):
        _build(fused_backward="always")


def test_auto_uses_member_weights_on_cpu_and_folded_uses_the_fused_node():
    _, ens = _build()
    conv = ens.net.stem.conv
    x = torch.randn(8, 3, 8, 8, requires_grad=True)
    assert type(conv(x).grad_fn).__name__ == "BatchEnsembleMemberWeightConvFunctionBackward"
    conv.conv_execution = "folded"
    assert type(conv(x).grad_fn).__name__ == "BatchEnsembleConvFunctionBackward"
    conv.fused = False
    assert type(conv(x).grad_fn).__name__ not in (
        "BatchEnsembleConvFunctionBackward",
        "BatchEnsembleMemberWeightConvFunctionBackward",
    )
    _, folded = _build(conv_execution="folded")
    assert folded.net.stem.conv.conv_execution == "folded"
