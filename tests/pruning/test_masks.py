"""Masks: exact zeros in the forward pass that survive training with weight decay; thresholds keep top-k."""

import pytest
import torch
from torch import nn

from ensemblekit.models import create_model
from ensemblekit.pruning import (
    add_masks,
    count_nonzero,
    density_report,
    get_masks,
    masks_from_scores,
    prunable_layers,
    prunable_weights,
    set_masks,
)


def test_classifier_bias_and_bn_are_never_prunable():
    net = create_model("resnet8", num_classes=10)
    names = prunable_layers(net)
    assert "head.fc" not in names
    assert all(isinstance(m, (nn.Conv2d, nn.Linear)) for m in names.values())
    assert len(names) == sum(isinstance(m, nn.Conv2d) for m in net.modules())


def test_masked_weights_stay_exactly_zero_through_sgd_with_weight_decay():
    torch.manual_seed(0)
    net = create_model("resnet8", num_classes=10)
    add_masks(net)
    scores = {n: torch.rand_like(w) for n, w in prunable_weights(net).items()}
    set_masks(net, masks_from_scores(scores, density=0.3))
    before = count_nonzero(net)
    total = sum(w.numel() for w in prunable_weights(net).values())
    assert before == pytest.approx(0.3 * total, abs=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert count_nonzero(net) == before
    for name, mask in get_masks(net).items():
        w = dict(net.named_modules())[name].weight
        assert torch.all(w[mask == 0] == 0)


def test_gradient_masks_keep_the_weights_in_the_forward_and_let_only_weight_decay_move_them():
    """enforce="gradient" (official NFE code): masked weights are used, get no gradient, shrink by w·(1 − lr·wd)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    assert add_masks(net, enforce="gradient") == ["0"]
    mask = (torch.rand(5, 6) < 0.5).float()
    set_masks(net, {"0": mask})
    w0 = net[0].parametrizations.weight.original.detach().clone()
    assert torch.equal(net[0].weight, w0) and w0[mask == 0].abs().min() > 0  # dense in the forward pass
    lr, wd = 0.1, 0.01
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.0, weight_decay=wd)
    nn.functional.cross_entropy(net(torch.randn(4, 6)), torch.tensor([0, 1, 2, 0])).backward()
    grad = net[0].parametrizations.weight.original.grad.clone()
    assert not grad[mask == 0].any() and grad[mask == 1].abs().min() > 0
    opt.step()
    w1 = net[0].parametrizations.weight.original.detach()
    torch.testing.assert_close(w1[mask == 0], w0[mask == 0] * (1 - lr * wd), rtol=1e-6, atol=0)
    torch.testing.assert_close(w1[mask == 1], w0[mask == 1] * (1 - lr * wd) - lr * grad[mask == 1])
    assert density_report(net)["0"]["density"] == 1.0  # nothing is zero: the official mode is dense
    with pytest.raises(ValueError, match="enforce must be"):
        add_masks(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), enforce="hook")


def test_global_threshold_keeps_exactly_the_top_scores():
    scores = {"a": torch.tensor([5.0, 1.0, 3.0]), "b": torch.tensor([[4.0, 0.5], [2.0, 6.0]])}
    masks = masks_from_scores(scores, density=3 / 7)
    assert masks["a"].tolist() == [1.0, 0.0, 0.0]
    assert masks["b"].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    layerwise = masks_from_scores(scores, density=0.5, scope="layerwise")
    assert layerwise["a"].sum() == 2 and layerwise["b"].tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_density_report_and_state_dict_round_trip():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    add_masks(net)
    set_masks(net, {"0": (torch.arange(4 * 3 * 9).view(4, 3, 3, 3) % 2).float()})
    assert density_report(net)["0"]["density"] == pytest.approx(54 / 108)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    add_masks(other)
    other.load_state_dict(net.state_dict())
    assert torch.equal(other[0].weight, net[0].weight)


def test_bad_masks_are_refused():
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    add_masks(net)
    with pytest.raises(KeyError):
        set_masks(net, {"1": torch.ones(2, 3)})
    with pytest.raises(ValueError):
        set_masks(net, {"0": torch.ones(2, 3)})
    with pytest.raises(ValueError):
        masks_from_scores({"0": torch.ones(3)}, density=1.5)
