"""The synthetic data set: pinned content, prefix stability, balance and learnability."""

from __future__ import annotations

import hashlib

import torch

from ensemblekit.data import load_data
from ensemblekit.data.synthetic import make_synthetic


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def test_content_is_pinned():
    # Same bytes on every machine: generated from a fixed seed with PCG64 and plain float arithmetic.
    train, test = make_synthetic(2000, "train"), make_synthetic(500, "test")
    assert _sha(train.images) == "d64adfd2a3f2f3763e118aac817cac9b155903d70f29b6872892a5ed1986f787"
    assert _sha(test.images) == "df82a8e031f2f8bd51ad1315d4370f563dfd53496fcb661680bc67e3875eac61"
    assert train.images[0, :, 0, 0].tolist() == [99, 124, 60]


def test_shapes_balance_and_prefix_stability():
    small, large = make_synthetic(30), make_synthetic(1100)  # 1100 crosses a generation chunk
    assert large.images.shape == (1100, 3, 32, 32) and large.images.dtype == torch.uint8
    assert torch.bincount(large.labels).tolist() == [110] * 10
    assert torch.equal(small.images, large.images[:30])
    assert not torch.equal(make_synthetic(30, "test").images, small.images)


def test_classes_are_separable_by_nearest_centroid():
    train, test = make_synthetic(1000), make_synthetic(300, "test")
    x, xt = train.images.float().flatten(1), test.images.float().flatten(1)
    centroids = torch.stack([x[train.labels == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(xt, centroids).argmin(1) == test.labels).float().mean()
    assert 0.6 < accuracy < 0.999  # learnable, but not a lookup table


def test_load_data_synthetic_sizes_and_independence_from_seed():
    default = load_data("synthetic")
    assert (len(default.train), len(default.test), default.val) == (2000, 500, None)
    assert default.num_classes == 10 and default.source.startswith("synthetic")
    bundle = load_data("synthetic", train_size=300, test_size=100, val_size=50, seed=4)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (300, 50, 100)
    other = load_data("synthetic", train_size=300, test_size=100, seed=9)
    assert torch.equal(other.test.images, bundle.test.images)  # data.seed picks subsets, not the data
    assert all(0.3 < m < 0.7 for m in bundle.mean) and all(0.1 < s < 0.3 for s in bundle.std)
