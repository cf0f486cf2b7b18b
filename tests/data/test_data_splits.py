"""Stratified subsets and the validation / train / test split order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ensemblekit.data import ImageTensors, load_data, stratified_indices
from ensemblekit.data.splits import class_quotas, split_data
from ensemblekit.errors import UserError


def test_quotas_by_largest_remainder():
    # 10 items of 3 classes (5, 3, 2), size 5: exact shares 2.5, 1.5, 1.0 -> floors 2, 1, 1; the one left
    # goes to the larger remainder, tie between classes 0 and 1 broken by the lower index.
    assert class_quotas(np.array([5, 3, 2]), 5).tolist() == [3, 1, 1]
    assert class_quotas(np.array([6, 3, 1]), 7).tolist() == [4, 2, 1]  # 4.2, 2.1, 0.7
    assert class_quotas(np.array([4, 4]), 0).tolist() == [0, 0]


def test_exact_class_counts_and_sorted_unique():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_indices(labels, 10, seed=3)
    assert idx.dtype == torch.int64 and idx.tolist() == sorted(set(idx.tolist()))
    assert torch.bincount(labels[idx], minlength=3).tolist() == [5, 3, 2]


def test_same_seed_same_subset_different_seed_differs():
    labels = torch.arange(1000) % 7
    a = stratified_indices(labels, 100, seed=0)
    assert torch.equal(a, stratified_indices(labels, 100, seed=0))
    assert not torch.equal(a, stratified_indices(labels, 100, seed=1))
    assert not torch.equal(a, stratified_indices(labels, 100, seed=0, stream=1))


def test_subset_is_pinned():
    # numpy's PCG64 stream is machine-independent, so these subsets are the same everywhere.
    assert stratified_indices(torch.arange(20) % 2, 4, seed=0).tolist() == [5, 8, 12, 19]
    assert stratified_indices(torch.arange(1000) % 3, 6, seed=123).tolist() == [40, 378, 488, 848, 877, 975]


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 30), min_size=1, max_size=8).filter(lambda c: sum(c) > 0),
    fraction=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_property_total_exact_and_proportional(counts, fraction, seed):
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    size = round(fraction * len(labels))
    idx = stratified_indices(labels, size, seed)
    assert len(idx) == size == len(set(idx.tolist()))
    got = torch.bincount(labels[idx], minlength=len(counts)).tolist()
    for k, c in enumerate(counts):
        share = c * size / len(labels)
        assert np.floor(share) <= got[k] <= np.ceil(share)


def _data(n: int, classes: int = 4) -> ImageTensors:
    """Row ``i`` has pixel values ``i % 256`` (channel 0) and ``i // 256`` (channel 1), so rows are traceable."""
    rows = torch.arange(n)
    images = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
    images[:, 0] = (rows % 256).to(torch.uint8).view(n, 1, 1)
    images[:, 1] = (rows // 256).to(torch.uint8).view(n, 1, 1)
    return ImageTensors(images, rows % classes, [str(k) for k in range(classes)])


def _rows(t: ImageTensors) -> list[int]:
    return (t.images[:, 0, 0, 0].long() + 256 * t.images[:, 1, 0, 0].long()).tolist()


def test_val_and_train_are_disjoint_and_stratified():
    train, test = _data(400), _data(80)
    new_train, val, new_test = split_data(train, test, train_size=120, test_size=40, val_size=100, seed=5)
    assert (len(new_train), len(val), len(new_test)) == (120, 100, 40)
    assert torch.bincount(val.labels).tolist() == [25] * 4 and torch.bincount(new_train.labels).tolist() == [30] * 4
    assert torch.bincount(new_test.labels).tolist() == [10] * 4
    assert not set(_rows(new_train)) & set(_rows(val))
    assert _rows(new_train) == sorted(_rows(new_train))  # kept rows stay in their original order
    assert all(train.labels[r] == lbl for r, lbl in zip(_rows(val), val.labels.tolist()))


def test_split_order_val_first_then_train():
    train, test = _data(200), _data(40)
    with_val, val, _ = split_data(train, test, train_size=100, val_size=40, seed=2)
    no_train_size, val2, _ = split_data(train, test, val_size=40, seed=2)
    assert _rows(val) == _rows(val2)  # the hold-out does not depend on train_size
    assert len(no_train_size) == 160 and len(with_val) == 100
    assert set(_rows(with_val)) <= set(_rows(no_train_size))


def test_sizes_too_large_name_the_field():
    train, test = _data(100), _data(20)
    with pytest.raises(UserError, match="val_size=101"):
        split_data(train, test, val_size=101)
    with pytest.raises(UserError, match=r"train_size=91 .* after holding out val_size=10"):
        split_data(train, test, train_size=91, val_size=10)
    with pytest.raises(UserError, match="test_size=21"):
        split_data(train, test, test_size=21)
    with pytest.raises(UserError, match="train_size must be a positive integer"):
        split_data(train, test, train_size=0)
    with pytest.raises(UserError, match="seed must be a non-negative"):
        split_data(train, test, seed=-1)


def test_load_data_subsets_are_seeded():
    a = load_data("synthetic", train_size=200, test_size=100, val_size=50, seed=1)
    b = load_data("synthetic", train_size=200, test_size=100, val_size=50, seed=1)
    c = load_data("synthetic", train_size=200, test_size=100, val_size=50, seed=2)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.val.images, c.val.images)
    assert torch.bincount(a.val.labels).tolist() == [5] * 10
    with pytest.raises(UserError, match="test_size must be a positive integer"):
        load_data("synthetic", test_size=0)
