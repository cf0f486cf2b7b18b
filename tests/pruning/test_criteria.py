"""Pruning criteria against hand computations; weight grouping partitions; sparse FLOP counts."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ensemblekit.metrics import inference_flops
from ensemblekit.models import create_model
from ensemblekit.pruning import add_masks, masks_from_scores, set_masks
from ensemblekit.pruning.criteria import CRITERIA, compute_scores, grasp_scores, snip_scores, synflow_scores
from ensemblekit.pruning.grouping import balanced_groups, bernoulli_groups
from ensemblekit.pruning.sparse_flops import sparse_inference_flops


def _linear(weight):
    weight = torch.tensor(weight)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return nn.Sequential(layer)


def test_snip_scores_equal_abs_gradient_times_weight_by_hand():
    net = _linear([[1.0, -2.0], [0.5, 3.0]])
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([0])
    # z = W x = [-3, 6.5]; dCE/dz = softmax(z) - onehot(0); dCE/dW = (softmax(z) - e0) x^T
    p = torch.softmax(torch.tensor([-3.0, 6.5]), 0)
    g = torch.outer(p - torch.tensor([1.0, 0.0]), torch.tensor([1.0, 2.0]))
    scores = snip_scores(net, ["0"], [(x, y)])
    torch.testing.assert_close(scores["0"], (g * net[0].weight.detach()).abs())
    assert net[0].weight.grad is None  # scoring leaves no gradients behind


def test_snip_with_the_official_logit_nll_loss_by_hand():
    """NFE's code: L = −mean_b z_{b,y_b} on raw logits, so dL/dW = −e_y xᵀ and s = |g ⊙ w|."""
    net = _linear([[1.0, -2.0], [0.5, 3.0]])
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([0])
    scores = snip_scores(net, ["0"], [(x, y)], loss="logit_nll")
    assert scores["0"].tolist() == [[1.0, 4.0], [0.0, 0.0]]
    via_compute = compute_scores("snip", net, ["0"], batches=[(x, y)], snip_loss="logit_nll")
    assert torch.equal(via_compute["0"], scores["0"])
    with pytest.raises(ValueError, match="unknown SNIP loss"):
        snip_scores(net, ["0"], [(x, y)], loss="nll")


def test_magnitude_keeps_the_largest_weights():
    net = _linear([[1.0, -4.0, 0.1], [-0.5, 3.0, 2.0]])
    masks = masks_from_scores(compute_scores("magnitude", net, ["0"]), density=0.5)
    assert masks["0"].tolist() == [[0.0, 1.0, 0.0], [0.0, 1.0, 1.0]]


def test_synflow_is_data_free_and_matches_the_path_norm_gradient():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    w1, w2 = net[0].weight.detach().clone(), net[2].weight.detach().clone()
    scores = synflow_scores(net, ["0", "2"], density=1.0, image_shape=(3,), rounds=1)
    # R = 1^T |W2| |W1| 1  =>  dR/dW1_ij = |W2_0i| ;  dR/dW2_0i = sum_j |W1_ij|
    torch.testing.assert_close(scores["0"], (w2.abs().T * w1.abs()).expand_as(w1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(scores["2"], w2.abs() * w1.abs().sum(1), rtol=1e-6, atol=1e-7)
    assert torch.equal(net[0].weight, w1)  # the network itself is untouched
    batches = [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))]
    again = compute_scores("synflow", net, ["0", "2"], batches=batches, density=1.0, image_shape=(3,), synflow_rounds=1)
    torch.testing.assert_close(again["0"], scores["0"])


def test_synflow_rounds_end_at_the_target_density_and_pruned_weights_score_below_survivors():
    torch.manual_seed(0)
    net = create_model("resnet8", num_classes=10, width=0.5)
    layers = ["stem.conv", "stages.0.0.conv1", "stages.1.0.conv1"]
    scores = synflow_scores(net, layers, density=0.25, image_shape=(3, 8, 8), rounds=5)
    masks = masks_from_scores(scores, 0.25)
    total = sum(s.numel() for s in scores.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.25 * total)
    pruned = torch.cat([s[m == 0] for s, m in zip(scores.values(), masks.values(), strict=True)])
    kept = torch.cat([s[m == 1] for s, m in zip(scores.values(), masks.values(), strict=True)])
    assert (pruned == -1).sum() > 0 and kept.min() >= 0


def test_grasp_scores_equal_weight_times_hessian_gradient_product():
    torch.manual_seed(0)
    net = _linear(torch.randn(3, 4).tolist())
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    w0 = net[0].weight.detach().clone()

    def loss(w):
        return F.cross_entropy(x @ w.T / 2.0, y)

    g = torch.autograd.functional.jacobian(loss, w0)
    h = torch.autograd.functional.hessian(loss, w0).reshape(12, 12)
    expected = w0 * (h @ g.flatten()).view_as(w0)
    torch.testing.assert_close(grasp_scores(net, ["0"], [(x, y)], temperature=2.0)["0"], expected)


def test_random_scores_are_deterministic_per_generator_and_every_criterion_runs_on_a_resnet():
    torch.manual_seed(0)
    net = create_model("resnet8", num_classes=10, width=0.5)
    layers = ["stem.conv", "stages.2.0.conv2"]
    batch = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))]
    for name in CRITERIA:
        gen = torch.Generator().manual_seed(3)
        scores = compute_scores(
            name, net, layers, batches=batch, generator=gen, image_shape=(3, 8, 8), synflow_rounds=2
        )
        assert {k: v.shape for k, v in scores.items()} == {n: dict(net.named_modules())[n].weight.shape for n in layers}
        assert all(torch.isfinite(v).all() for v in scores.values())
    a = compute_scores("random", net, layers, generator=torch.Generator().manual_seed(1))
    b = compute_scores("random", net, layers, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a[n], b[n]) for n in layers)
    with pytest.raises(ValueError, match="unknown pruning criterion"):
        compute_scores("hessian", net, layers)


@pytest.mark.parametrize("parts", [2, 3, 5])
def test_balanced_groups_partition_the_mask_with_sizes_within_one(parts):
    mask = (torch.rand(7, 9, generator=torch.Generator().manual_seed(parts)) < 0.6).float()
    groups = balanced_groups(mask, parts, torch.Generator().manual_seed(0))
    stacked = torch.stack(groups)
    assert torch.equal(stacked.sum(0), mask)  # disjoint (no entry above 1) and union = mask
    sizes = [int(g.sum()) for g in groups]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == int(mask.sum())
    again = balanced_groups(mask, parts, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(groups, again, strict=True))


@pytest.mark.parametrize("parts", [2, 3])
def test_bernoulli_groups_are_disjoint_nonnegative_and_binomially_sized(parts):
    mask = (torch.rand(60, 50, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    groups = bernoulli_groups(mask, parts, torch.Generator().manual_seed(2))
    stacked = torch.stack(groups)
    assert stacked.min() >= 0 and torch.equal(stacked.sum(0), mask)
    n = int(mask.sum())
    sigma = math.sqrt(n * (1 / parts) * (1 - 1 / parts))
    for g in groups:
        assert abs(int(g.sum()) - n / parts) < 4 * sigma


def test_sparse_flops_count_only_nonzero_weights_and_dense_matches_the_flop_counter():
    torch.manual_seed(0)
    net = create_model("resnet8", num_classes=10, width=0.5)
    dense = inference_flops(net, (1, 3, 16, 16))
    names = add_masks(net)
    counts = sparse_inference_flops(net, (1, 3, 16, 16))
    assert counts["dense"] == counts["sparse"] == dense
    table = dict(net.named_modules())
    set_masks(net, {n: torch.zeros_like(table[n].weight) for n in names})
    counts = sparse_inference_flops(net, (1, 3, 16, 16))
    assert counts["dense"] == dense and counts["sparse"] == 2 * 10 * net.head.fc.in_features  # only the classifier
