"""Template banks and mixture layers: reconstruction, assignment rules, budgets, gradients, packed == loop."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.layers.packed import MemberBatchNorm2d, SharedConv2d, SharedLinear
from ensemblekit.layers.template import RecordingFactory, TemplateBank, TemplateLayer
from ensemblekit.layers.template_plan import LayerRecord, plan_blob, plan_groups
from ensemblekit.methods.mixture import build_mixture_ensemble
from ensemblekit.metrics import count_parameters
from ensemblekit.models import create_model
from ensemblekit.training.losses import member_cross_entropy


def mixture(name="resnet20", members=2, budget=1.0, seed=0, model_kw=None, **kw):
    torch.manual_seed(seed)
    model_kw = {"width": 0.25, **(model_kw or {})}
    return build_mixture_ensemble(
        lambda layers: create_model(name, 10, layers=layers, **model_kw), members, budget, **kw
    )


def template_layers(ens):
    return [m for m in ens.net.modules() if isinstance(m, TemplateLayer)]


def bn_layers(ens):
    return [m for m in ens.net.modules() if isinstance(m, MemberBatchNorm2d)]


# ---------------------------------------------------------------- reconstruction


def test_one_hot_coefficients_give_the_template_exactly():
    ens = mixture(members=3, budget=2.0, templates_per_layer=3)
    for layer in template_layers(ens):
        with torch.no_grad():
            layer.coefficients.zero_()
            for i in range(3):
                layer.coefficients[i, i % layer.t] = 1.0
        w = layer.member_weights()
        bank = ens.bank.groups[layer.group]
        for i in range(3):
            tid = layer._rows[i % layer.t]
            assert torch.equal(w[i], bank[tid].view(layer.shape))


def _load_plain_into_mixture(plain: nn.Module, ens) -> None:
    """Copy a plain backbone into an M=1, t=1 mixture whose layer j of a group reads template j."""
    mods = dict(ens.net.named_modules())
    with torch.no_grad():
        for name, p_mod in plain.named_modules():
            m_mod = mods[name]
            if isinstance(m_mod, TemplateLayer):
                assert m_mod.t == 1 and len(m_mod._rows) == 1
                ens.bank.groups[m_mod.group][m_mod._rows[0]].copy_(p_mod.weight.flatten())
                m_mod.coefficients.fill_(1.0)
                if p_mod.bias is not None:
                    m_mod.bias.copy_(p_mod.bias)
            elif isinstance(p_mod, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
                m_mod.load_state_dict(p_mod.state_dict())


@pytest.mark.parametrize(
    ("name", "kw"),
    [("resnet20", {"width": 0.5}), ("resnet20", {"width": 0.5, "shortcut": "zero_pad"}), ("wrn16_4", {"width": 0.125})],
)
@pytest.mark.parametrize("layout", ["loop", "packed"])
def test_one_member_with_one_template_per_layer_is_the_plain_backbone(name, kw, layout):
    ens = mixture(name, members=1, budget=1.0, templates_per_layer=1, model_kw=kw, layout=layout)
    assert all(g.num_templates == len(g.layers) for g in ens.plan.groups.values())  # n_g = L_g at 1.0
    assert [layer._rows[0] for layer in template_layers(ens) if layer.group == next(iter(ens.plan.groups))] == list(
        range(len(next(iter(ens.plan.groups.values())).layers))
    )
    torch.manual_seed(1)
    plain = create_model(name, 10, **kw)
    for m in plain.modules():  # non-trivial BN so that a wrong slice would show
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    _load_plain_into_mixture(plain, ens)
    x = torch.randn(4, 3, 32, 32)
    for train in (False, True):
        plain.train(train), ens.train(train)
        torch.testing.assert_close(ens(x)[0], plain(x), atol=1e-5, rtol=0)
    for m_bn, p_bn in zip(bn_layers(ens), [m for m in plain.modules() if isinstance(m, nn.BatchNorm2d)]):
        torch.testing.assert_close(m_bn.running_mean, p_bn.running_mean, atol=1e-6, rtol=0)  # updated alike


# ---------------------------------------------------------------- assignment rules


def _records(group_layers=4, shape=(8, 8, 3, 3)):
    recs = [LayerRecord(0, "conv", (8, 3, 3, 3), False)]
    recs += [LayerRecord(1 + j, "conv", shape, False) for j in range(group_layers)]
    recs.append(LayerRecord(1 + group_layers, "linear", (10, 8), True))
    return recs


def _singletons(recs):
    return recs[0].numel + recs[-1].numel + recs[-1].bias_numel


def test_round_robin_assignment_is_documented_index_set():
    recs = _records()
    plan = plan_groups(recs, _singletons(recs) + 6 * 576, members=3, templates_per_layer=5)
    (group,) = plan.groups.values()
    assert group.num_templates == 6
    subsets = [lp.templates for lp in plan.layers if lp.role == "template"]
    expected = [(0, 1, 2, 3, 4), (5, 0, 1, 2, 3), (4, 5, 0, 1, 2), (3, 4, 5, 0, 1)]  # {(j*t + r) mod n}
    assert [s[0] for s in subsets] == expected
    assert all(s[0] == s[1] == s[2] for s in subsets)  # CIFAR: members combine the same templates
    assert [lp.role for lp in plan.layers] == ["shared", "template", "template", "template", "template", "shared"]


def test_fewer_templates_than_t_uses_all_of_them():
    recs = _records()
    plan = plan_groups(recs, _singletons(recs) + 3 * 576, members=1, templates_per_layer=5)
    assert [lp.templates[0] for lp in plan.layers if lp.role == "template"] == [(0, 1, 2)] * 4
    assert all(lp.t == 3 for lp in plan.layers if lp.role == "template")


def test_disjoint_assignment_hands_out_every_template_before_reuse():
    recs = _records()
    plan = plan_groups(recs, _singletons(recs) + 12 * 576, members=3, templates_per_layer=2, assignment="disjoint")
    subsets = [lp.templates for lp in plan.layers if lp.role == "template"]
    # member i of layer j combines {((j*M + i)*t + r) mod n}
    assert subsets[0] == ((0, 1), (2, 3), (4, 5))
    assert subsets[1] == ((6, 7), (8, 9), (10, 11))
    assert subsets[2] == ((0, 1), (2, 3), (4, 5))  # reuse starts only after all 12 are used
    for layer in subsets:
        assert len({t for member in layer for t in member}) == 6  # members of a layer are disjoint


def test_singleton_and_too_small_groups_become_shared_layers():
    recs = _records(group_layers=10)  # group A: 10 x 576
    recs += [LayerRecord(12, "conv", (4, 4, 3, 3), False), LayerRecord(13, "conv", (4, 4, 3, 3), False)]  # B: 2 x 144
    fixed = _singletons(recs[:12])
    # B's proportional share, 2000 * 288 / 6048 = 95, is below one template: B becomes plain shared layers, its
    # 288 parameters leave the budget and A gets the rest: 2 templates + 1 (remainder 560 is closer to 576 than 0)
    plan = plan_groups(recs, fixed + 2000, members=2)
    roles = {lp.record.index: lp.role for lp in plan.layers}
    assert roles[12] == roles[13] == "shared" and roles[0] == roles[11] == "shared"
    assert set(plan.groups) == {"conv_8x8x3x3"} and plan.groups["conv_8x8x3x3"].num_templates == 3
    assert plan.bank_params + plan.shared_params == fixed + 2000 + 16


def test_thin_variant_banks_singletons_too():
    recs = _records()
    plan = plan_groups(recs, 2 * sum(r.numel + r.bias_numel for r in recs), 2, bank_singletons=True)
    assert all(lp.role == "template" for lp in plan.layers)
    assert plan.groups["conv_8x3x3x3"].num_templates == 2


# ---------------------------------------------------------------- blob mode


def test_blob_windows_advance_and_wrap():
    recs = _records(group_layers=2)
    plan = plan_blob(recs, 3000, members=1, templates_per_layer=3)
    assert plan.bank_params + plan.shared_params == 3000 and plan.blob_size == 3000 - 10
    starts = [lp.windows[0] for lp in plan.layers]
    sizes = [3 * r.numel for r in recs]
    cursor = 0
    for (start, length), size in zip(starts, sizes):
        assert (start, length) == (cursor % plan.blob_size, size)
        cursor += size
    bank = TemplateBank(plan)
    with torch.no_grad():
        bank.blob.copy_(torch.arange(plan.blob_size, dtype=torch.float32))
    w = bank.window(2900, 200)  # wraps once
    assert torch.equal(w, torch.cat([torch.arange(2900, 2990), torch.arange(0, 110)]).float())
    w = bank.window(10, 2 * 2990 + 5)  # longer than the blob: wraps twice, reusing entries
    assert w.numel() == 2 * 2990 + 5 and torch.equal(w[:2980], torch.arange(10, 2990).float())
    assert torch.equal(w[2980:5970], torch.arange(0, 2990).float()) and torch.equal(w[5970:], torch.arange(15).float())


def test_blob_budget_is_exact_and_oversized_blob_is_refused():
    ens = mixture("resnet20", members=2, budget=0.25, sharing="blob", model_kw={"width": 0.5})
    report = ens.budget_report()
    assert report["bank"] + report["shared"] == report["requested"]
    assert not any(isinstance(m, SharedConv2d | SharedLinear) for m in ens.net.modules())  # all layers read the blob
    with pytest.raises(UserError, match="more parameters than the layers can read"):
        mixture(budget=6.0, sharing="blob")


# ---------------------------------------------------------------- budgets (meta device)


def _bn_channels(name):
    with torch.device("meta"):
        plain = create_model(name, 10)
    return sum(m.num_features for m in plain.modules() if isinstance(m, nn.BatchNorm2d))


BUDGET_CASES = [
    (name, budget, "blob" if (name, budget) in {("resnet20", 0.25), ("wrn16_4", 0.25)} else "groups")
    for name in ("resnet20", "wrn16_4", "wrn28_10")
    for budget in (0.25, 0.5, 1.0, 2.0, 3.3)
]


@pytest.mark.parametrize(("name", "budget", "sharing"), BUDGET_CASES)
def test_budget_is_met_within_one_percent(name, budget, sharing):
    members = 4
    with torch.device("meta"):
        ens = build_mixture_ensemble(
            lambda layers: create_model(name, 10, layers=layers), members, budget, sharing=sharing
        )
    rec = RecordingFactory()
    with torch.device("meta"):
        create_model(name, 10, layers=rec)
    plain = sum(r.numel + r.bias_numel for r in rec.records)
    report = ens.budget_report()
    requested = round(budget * plain)
    assert report["requested"] == requested
    assert abs(report["bank"] + report["shared"] - requested) <= 0.01 * requested
    coefficients = sum(m.coefficients.numel() for m in template_layers(ens)) // members
    assert report["per_member_overhead"] == coefficients + 2 * _bn_channels(name)
    unique = count_parameters(ens)["unique_params"]
    assert unique == report["bank"] + report["shared"] + members * report["per_member_overhead"]


def test_wrn28_10_at_its_own_size_holds_seven_templates_per_group():
    with torch.device("meta"):
        ens = build_mixture_ensemble(lambda layers: create_model("wrn28_10", 10, layers=layers), 4, 1.0)
    report = ens.budget_report()
    assert report["templates"] == {"conv_160x160x3x3": 7, "conv_320x320x3x3": 7, "conv_640x640x3x3": 7}
    assert report["coefficients_per_member"] == 105  # 21 template layers x t = 5 (the paper's 105)
    assert report["bank"] + report["shared"] == report["plain"]


def test_groups_mode_refuses_a_budget_it_cannot_meet():
    with torch.device("meta"), pytest.raises(UserError, match="sharing: blob"):
        build_mixture_ensemble(lambda layers: create_model("resnet20", 10, layers=layers), 4, 0.25)


def test_thin_variant_through_the_width():
    """Thin MixtureEnsembles: WRN-28-5 members (model: {name: wrn, kwargs: {depth: 28, widen_factor: 5}}) at the
    budget of one WRN-28-10, with banks for singleton layers too (appendix A.1)."""
    with torch.device("meta"):
        ens = build_mixture_ensemble(
            lambda layers: create_model("wrn", 10, depth=28, widen_factor=5, layers=layers),
            4,
            36_479_194.0,
            bank_singletons=True,
        )
    report = ens.budget_report()
    assert abs(report["bank"] + report["shared"] - 36_479_194) <= 0.01 * 36_479_194
    assert report["shared"] == 10  # only the classifier's bias: every layer reads a bank
    assert report["plain"] == 9_132_634 - 2 * 4496  # WRN-28-5 without its BatchNorm γ/β


# ---------------------------------------------------------------- gradients and forward layouts


@pytest.mark.parametrize("layout", ["loop", "packed"])
def test_a_loss_on_member_zero_leaves_other_members_untouched(layout):
    ens = mixture(members=3, budget=1.0, layout=layout)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(ens(x)[0], y).backward()
    for layer in template_layers(ens):
        assert layer.coefficients.grad[0].abs().sum() > 0
        assert torch.all(layer.coefficients.grad[1:] == 0)
    for bn in bn_layers(ens):
        c = bn.channels
        assert bn.weight.grad[:c].abs().sum() > 0
        assert torch.all(bn.weight.grad[c:] == 0) and torch.all(bn.bias.grad[c:] == 0)
    for bank in ens.bank.groups.values():
        assert bank.grad.abs().sum() > 0


CONFIGS = [
    {"budget": 1.0},
    {"budget": 2.0, "template_assignment": "disjoint", "model_kw": {"shortcut": "zero_pad"}},
    {"budget": 0.25, "sharing": "blob"},
    {"name": "wrn16_4", "budget": 1.5, "model_kw": {"width": 0.125}},
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_packed_and_loop_agree(cfg):
    loop = mixture(members=3, **cfg, layout="loop")
    packed = copy.deepcopy(loop)
    packed.layout = "packed"
    x = torch.randn(8, 3, 32, 32)
    for train in (True, False):
        loop.train(train), packed.train(train)
        torch.testing.assert_close(packed(x), loop(x), atol=1e-5, rtol=0)
    for (name, a), b in zip(loop.state_dict().items(), packed.state_dict().values()):  # same BN statistics
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_packed_and_loop_agree_after_sgd_steps(cfg):
    """In float64, so that only the algebra is compared: in float32 tiny BatchNorm batches (4 channels, batch 8)
    amplify rounding differences to ~1e-3 after three momentum steps in blob mode, in float64 they stay ~1e-15."""
    loop = mixture(members=3, **cfg, layout="loop").double()
    packed = copy.deepcopy(loop)
    packed.layout = "packed"
    torch.manual_seed(2)
    x, y = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))
    opts = [torch.optim.SGD(e.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4) for e in (loop, packed)]
    for _ in range(3):
        for ens, opt in zip((loop, packed), opts):
            ens.train()
            loss = member_cross_entropy(ens(x), y, "sum")
            opt.zero_grad()
            loss.backward()
            opt.step()
    for train in (True, False):
        loop.train(train), packed.train(train)
        torch.testing.assert_close(packed(x), loop(x), atol=1e-9, rtol=0)
    for (name, a), b in zip(loop.state_dict().items(), packed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0, msg=name)


def test_channels_last_conversion_keeps_the_bank_and_the_outputs():
    ens = mixture(members=2, layout="packed")
    x = torch.randn(2, 3, 32, 32)
    ens.eval()
    before = ens(x)
    ens.to(memory_format=torch.channels_last)
    torch.testing.assert_close(ens(x.contiguous(memory_format=torch.channels_last)), before, atol=1e-5, rtol=0)
    ens.layout = "loop"
    torch.testing.assert_close(ens(x), before, atol=1e-5, rtol=0)


def test_weights_are_formed_by_one_contraction_per_layer_per_forward(monkeypatch):
    ens = mixture(members=3, layout="loop")
    calls = []
    real = TemplateLayer.templates
    monkeypatch.setattr(TemplateLayer, "templates", lambda self: calls.append(id(self)) or real(self))
    ens(torch.randn(2, 3, 32, 32))
    assert sorted(calls) == sorted(id(m) for m in template_layers(ens))  # once per layer, not once per member
