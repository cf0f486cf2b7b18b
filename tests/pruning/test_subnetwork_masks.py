"""Child masks of Neural Subnetwork Ensembles: exact layer-wise counts, complements, partitions, structure."""

from __future__ import annotations

import pytest
import torch

from ensemblekit.models import create_model
from ensemblekit.pruning import add_masks, masked_layers, prunable_layers, set_masks
from ensemblekit.pruning import subnetwork_masks as sm


def _shapes():
    torch.manual_seed(0)
    net = create_model("resnet8", 10, width=0.5)
    return net, {name: tuple(m.weight.shape) for name, m in prunable_layers(net).items()}


def test_anti_random_pairs_are_complements_with_exactly_half_zeros_per_layer():
    net, shapes = _shapes()
    assert "head.fc" not in shapes and len(shapes) > 3
    a, b = sm.anti_random_pair(shapes, torch.Generator().manual_seed(1))
    for name, shape in shapes.items():
        n = a[name].numel()
        assert torch.equal(a[name] + b[name], torch.ones(shape)), name
        assert int((a[name] == 0).sum()) == round(0.5 * n) and int((b[name] == 0).sum()) == n - round(0.5 * n)
    # a second pair is independent of the first
    c, _ = sm.anti_random_pair(shapes, torch.Generator().manual_seed(2))
    assert any(not torch.equal(a[k], c[k]) for k in shapes)
    # applied to a network: the classifier keeps no mask and no zeros
    add_masks(net)
    set_masks(net, a)
    assert "head.fc" not in masked_layers(net)
    assert int((net.head.fc.weight == 0).sum()) == 0
    for name, layer in masked_layers(net).items():
        assert int((layer.weight == 0).sum()) >= int((a[name] == 0).sum())


@pytest.mark.parametrize("parts", [2, 3, 5])
def test_partition_masks_are_disjoint_and_cover_every_weight(parts):
    _, shapes = _shapes()
    masks = sm.partition_masks(shapes, parts, torch.Generator().manual_seed(0))
    assert len(masks) == parts
    for name, shape in shapes.items():
        total = sum(m[name] for m in masks)
        assert torch.equal(total, torch.ones(shape)), name  # disjoint (no 2) and covering (no 0)
        sizes = [int(m[name].sum()) for m in masks]
        assert max(sizes) - min(sizes) <= 1


def test_random_masks_keep_exact_counts_and_differ_by_seed():
    _, shapes = _shapes()
    m1 = sm.random_masks(shapes, 0.7, torch.Generator().manual_seed(0))
    m2 = sm.random_masks(shapes, 0.7, torch.Generator().manual_seed(1))
    for name in shapes:
        n = m1[name].numel()
        assert int(m1[name].sum()) == round(0.3 * n)
        assert set(m1[name].unique().tolist()) <= {0.0, 1.0}
    assert any(not torch.equal(m1[k], m2[k]) for k in shapes)


def test_magnitude_masks_keep_the_largest_weights_of_each_layer():
    w = {"a": torch.tensor([[0.1, -3.0], [2.0, 0.5]]), "b": torch.tensor([5.0, -0.01, 0.2, 0.3])}
    m = sm.magnitude_masks(w, 0.5)
    assert m["a"].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert m["b"].tolist() == [1.0, 0.0, 0.0, 1.0]


def test_neuron_masks_remove_whole_output_channels():
    _, shapes = _shapes()
    masks = sm.neuron_masks(shapes, 0.5, torch.Generator().manual_seed(0))
    for name, shape in shapes.items():
        rows = masks[name].reshape(shape[0], -1)
        per_row = rows.sum(1)
        assert set(per_row.tolist()) <= {0.0, float(rows.shape[1])}  # a channel is kept or removed whole
        assert int((per_row == 0).sum()) == round(0.5 * shape[0])


def test_bad_sparsity_is_refused():
    with pytest.raises(ValueError, match="sparsity"):
        sm.random_masks({"a": (2, 2)}, 1.0, torch.Generator())


def test_anti_random_neuron_pairs_keep_complementary_whole_channels():
    _, shapes = _shapes()
    a, b = sm.anti_random_neuron_pair(shapes, torch.Generator().manual_seed(3))
    for name, shape in shapes.items():
        assert torch.equal(a[name] + b[name], torch.ones(shape)), name
        rows_a, rows_b = a[name].reshape(shape[0], -1), b[name].reshape(shape[0], -1)
        for rows in (rows_a, rows_b):  # a channel (a Conv2d filter / a Linear neuron) is kept or removed whole
            assert set(rows.sum(1).tolist()) <= {0.0, float(rows.shape[1])}, name
        kept_a, kept_b = rows_a[:, 0].bool(), rows_b[:, 0].bool()
        assert not (kept_a & kept_b).any() and (kept_a | kept_b).all()  # complementary channel sets
        assert int((~kept_a).sum()) == round(0.5 * shape[0])
    c, _ = sm.anti_random_neuron_pair(shapes, torch.Generator().manual_seed(4))
    assert any(not torch.equal(a[k], c[k]) for k in shapes)  # pairs are independent
    net, _ = _shapes()
    original = {n: m.weight.detach().clone() for n, m in prunable_layers(net).items()}
    add_masks(net)
    set_masks(net, a)
    for name, layer in masked_layers(net).items():  # on the network: a removed filter's weights are all zero
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        dropped = a[name].reshape(w.shape[0], -1)[:, 0] == 0
        assert (w[dropped] == 0).all() and torch.equal(w[~dropped], original[name].reshape(w.shape)[~dropped])
    linear = sm.anti_random_neuron_pair({"fc": (5, 7)}, torch.Generator().manual_seed(0))
    assert sorted(int(m["fc"][:, 0].sum()) for m in linear) == [2, 3]  # odd width: 3 + 2 neurons
