"""``fission`` with ``reference: official``: the official NFE code's training (Lee & Lee, 2024, ``hjdw2/NFE``)
— gradient-hook masks, independently initialised paths, SNIP on a Xavier copy with NLL on raw logits and the
1x1 shortcuts in the global ranking — against hand computations; the default stays the corrected form."""

import json
import math

import pytest
import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.methods.fission.build import fission_names, scored_layers
from ensemblekit.methods.fission.loss import fission_loss
from ensemblekit.methods.fission.network import copies_per_stage
from ensemblekit.methods.fission.official import xavier_scoring_copy
from ensemblekit.pruning import get_masks, has_mask, masked_layers, masks_from_scores
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import train
from tests.conftest import tiny_config
from tests.methods.test_fission import _build, _fissioned

SHORTCUTS = ["stages.1.0.shortcut.conv", "stages.2.0.shortcut.conv"]


def test_official_pruned_weights_stay_in_the_forward_get_no_gradient_and_fade_by_weight_decay():
    _, ens, _, (x, y) = _fissioned(reference="official")
    layers = masked_layers(ens)
    masks = get_masks(ens)
    before = {name: layer.parametrizations.weight.original.detach().clone() for name, layer in layers.items()}
    assert all((masks[n] == 0).any() for n in layers)
    for name, layer in layers.items():  # not zero in the forward pass: the effective weight is the raw one
        assert torch.equal(layer.weight, before[name]) and before[name][masks[name] == 0].abs().min() > 0
    lr, wd = 0.1, 0.01
    opt = torch.optim.SGD(ens.parameters(), lr=lr, momentum=0.0, weight_decay=wd)
    ens.train()
    fission_loss(ens(x), y).backward()
    grads = {name: layer.parametrizations.weight.original.grad.clone() for name, layer in layers.items()}
    opt.step()
    for name, layer in layers.items():
        off, on = masks[name] == 0, masks[name] == 1
        assert not grads[name][off].any()
        after = layer.parametrizations.weight.original.detach()
        torch.testing.assert_close(after[off], before[name][off] * (1 - lr * wd), rtol=1e-6, atol=0)
        torch.testing.assert_close(after[on], before[name][on] * (1 - lr * wd) - lr * grads[name][on])
    # the corrected default: the same weights are exactly zero in the forward pass
    _, default, _, _ = _fissioned()
    assert all(torch.all(m.weight[get_masks(default)[n] == 0] == 0) for n, m in masked_layers(default).items())


def _pairs(ens):
    """(a, b) weights that belong to different paths (stage copies, shortcuts, heads)."""
    t = dict(ens.named_modules())
    return [
        (
            t["stages.1.0.0.conv1"].parametrizations.weight.original,
            t["stages.1.1.0.conv1"].parametrizations.weight.original,
        ),
        (
            t["stages.2.0.0.conv2"].parametrizations.weight.original,
            t["stages.2.2.0.conv2"].parametrizations.weight.original,
        ),
        (t["stages.1.0.0.shortcut.conv"].weight, t["stages.1.1.0.shortcut.conv"].weight),
        (t["heads.0.fc"].weight, t["heads.1.fc"].weight),
    ]


def test_official_paths_are_independently_initialised_and_the_default_copies_one_backbone():
    _, official = _build(reference="official")
    _, default = _build()
    assert all(not torch.equal(a, b) for a, b in _pairs(official))
    assert all(torch.equal(a, b) for a, b in _pairs(default))
    _, explicit = _build(reference="official", path_init="independent")
    assert all(not torch.equal(a, b) for a, b in _pairs(explicit))


def test_the_scoring_copy_is_xavier_normal_and_leaves_the_rest_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(64, 128, 3), nn.BatchNorm2d(128), nn.Flatten(), nn.Linear(8, 4))
    original = {k: v.clone() for k, v in net.state_dict().items()}
    work = xavier_scoring_copy(net, seed=5)
    fan_in, fan_out = 64 * 9, 128 * 9
    assert work[0].weight.std().item() == pytest.approx(math.sqrt(2.0 / (fan_in + fan_out)), rel=0.02)
    assert abs(work[0].weight.mean().item()) < 1e-3
    assert torch.equal(work[3].weight, net[3].weight) and torch.equal(work[0].bias, net[0].bias)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in original.items())  # the input is untouched
    assert torch.equal(xavier_scoring_copy(net, seed=5)[0].weight, work[0].weight)  # deterministic


def test_official_masks_are_snip_on_a_xavier_copy_with_logit_nll_and_shortcuts_in_the_global_ranking():
    method, ens, report, (x, y) = _fissioned(reference="official")
    # by hand: every Conv2d of the backbone (1x1 shortcuts included) on the Xavier copy, L = −mean z_y
    scoring = xavier_scoring_copy(method.reference().train(), method.cfg.train.seed + 29).train()
    convs = {n: m.weight for n, m in scoring.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(SHORTCUTS) <= set(convs) and list(convs) == scored_layers(scoring, shortcuts=True)
    z = scoring(x)
    loss = -z[torch.arange(len(y)), y].mean()
    grads = torch.autograd.grad(loss, list(convs.values()))
    scores = {n: (g * w.detach()).abs() for (n, w), g in zip(convs.items(), grads, strict=True)}
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = round(0.5 * flat.numel())
    threshold = torch.sort(flat, descending=True).values[keep - 1]
    expected = {n: (s >= threshold).float() for n, s in scores.items()}
    assert sum(int(m.sum()) for m in expected.values()) == keep  # no ties at the threshold
    fmasks = get_masks(ens)
    copies = copies_per_stage(3, 3)
    for name in scored_layers(scoring):  # the masked layers: the copies' groups add up to the hand mask
        groups = torch.stack([fmasks[t] for t in fission_names(name, copies)])
        assert torch.equal(groups.sum(0), expected[name]), name
    for name in SHORTCUTS:  # ranked (their scores set the threshold), never masked
        assert report["backbone_density"][name] == pytest.approx(float(expected[name].mean()))
        assert all(not has_mask(dict(ens.named_modules())[t]) for t in fission_names(name, copies))
    without = masks_from_scores({n: s for n, s in scores.items() if n not in SHORTCUTS}, 0.5)
    assert any(not torch.equal(without[n], expected[n]) for n in without)  # the shortcuts move the threshold
    assert report["reference"] == "official" and report["backbone_nonzero"] == sum(
        int(expected[n].sum()) for n in scored_layers(scoring)
    )


def test_official_option_conflicts_are_refused():
    with pytest.raises(UserError, match="grouping balanced or bernoulli, not channels"):
        _build(reference="official", grouping="channels")
    with pytest.raises(UserError, match="path_init: split contradicts reference: official"):
        _build(reference="official", path_init="split")
    with pytest.raises(UserError, match=r"method\.reference"):
        _build(reference="paper")


def test_official_end_to_end_run_logs_the_reference_and_counts_dense_nonzeros(tmp_path):
    method = {"name": "fission", "reference": "official", "score_batch_size": 32}
    record = train(config_from_dict(tiny_config(method=method, train={"epochs": 1})), tmp_path / "run", quiet=True)
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    (pruning,) = [e for e in events if e["event"] == "pruning"]
    assert pruning["reference"] == "official"
    assert any(".shortcut." in n for n in pruning["backbone_density"])
    assert pruning["prunable_nonzero"] > pruning["backbone_nonzero"]  # pruned weights are used, not zero
    assert len(record["members"]) == 3
