"""BatchLoader: determinism per (seed, epoch), subsets with repeats, and DDP sharding."""

from __future__ import annotations

import pytest
import torch

from ensemblekit.data import BatchLoader, ImageTensors, normalize

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _data(n: int = 103) -> ImageTensors:
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return ImageTensors(images, torch.arange(n) % 5, [str(k) for k in range(5)])


def _loader(data, batch_size: int = 16, **kw) -> BatchLoader:
    args = {"mean": MEAN, "std": STD, "shuffle": True, "augment": True, "seed": 0, **kw}
    return BatchLoader(data, batch_size, **args)


def _epoch(loader: BatchLoader, epoch: int) -> list[tuple[torch.Tensor, ...]]:
    loader.set_epoch(epoch)
    return list(loader.iter_with_index())


def test_batches_shapes_and_lengths():
    loader = _loader(_data(), batch_size=16)
    batches = _epoch(loader, 0)
    assert len(loader) == len(batches) == 7 and loader.num_samples == 103
    x, y, _ = batches[0]
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert batches[-1][0].shape[0] == 103 - 6 * 16
    dropped = _loader(_data(), batch_size=16, drop_last=True)
    assert len(dropped) == 6 and dropped.num_samples == 96 and len(list(dropped)) == 6


def test_epoch_is_pure_function_of_seed_and_epoch():
    data = _data()
    a, b = _loader(data, seed=7), _loader(data, seed=7)
    _epoch(a, 5)  # history must not matter
    for (xa, ya, ia), (xb, yb, ib) in zip(_epoch(a, 3), _epoch(b, 3), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    order = lambda loader, e: torch.cat([i for _, _, i in _epoch(loader, e)])  # noqa: E731
    assert not torch.equal(order(a, 3), order(a, 4))
    assert not torch.equal(order(a, 3), order(_loader(data, seed=8), 3))
    assert sorted(order(a, 3).tolist()) == list(range(103))


def test_labels_and_pixels_match_rows():
    data = _data()
    for x, y, idx in _epoch(_loader(data, augment=False), 2):
        assert torch.equal(y, data.labels[idx])
        assert torch.equal(x, normalize(data.images[idx], MEAN, STD))


def test_augmentation_differs_between_epochs_for_the_same_row():
    data = _data(8)
    loader = _loader(data, batch_size=8)
    by_row = []
    for epoch in (0, 1):
        x, _, idx = _epoch(loader, epoch)[0]
        by_row.append(x[idx.argsort()])
    assert not torch.equal(by_row[0], by_row[1])


def test_indices_restrict_rows_with_repeats():
    data = _data()
    indices = torch.tensor([3, 3, 3, 10, 50, 50])
    loader = _loader(data, indices=indices, batch_size=4)
    rows = torch.cat([i for _, _, i in _epoch(loader, 0)])
    assert sorted(rows.tolist()) == [3, 3, 3, 10, 50, 50] and len(loader) == 2
    with pytest.raises(ValueError):
        _loader(data, indices=torch.tensor([103]))


@pytest.mark.parametrize("n,world", [(103, 4), (100, 4), (5, 3), (2, 4)])
def test_eval_shards_cover_every_row_once_after_dedup(n, world):
    data = _data(n)
    gathered, lengths = [], []
    for rank in range(world):
        loader = _loader(data, shuffle=False, augment=False, rank=rank, world_size=world, batch_size=8)
        idx = torch.cat([i for _, _, i in _epoch(loader, 0)])
        lengths.append(len(idx))
        assert loader.num_samples == len(idx)
        gathered.append(idx)
    assert len(set(lengths)) == 1  # padded to equal length
    every = torch.cat(gathered)
    assert sorted(set(every.tolist())) == list(range(n))
    assert every[n:].eq(n - 1).all()  # padding repeats the last row
    assert torch.equal(every[:n], torch.arange(n))  # contiguous chunks in rank order restore the order


@pytest.mark.parametrize("n,world", [(103, 4), (100, 2), (7, 3)])
def test_training_shards_are_disjoint_and_equal(n, world):
    data = _data(n)
    shards = []
    for rank in range(world):
        loader = _loader(data, rank=rank, world_size=world, seed=3)
        shards.append(torch.cat([i for _, _, i in _epoch(loader, 1)]).tolist())
        assert loader.num_samples == n // world
    assert {len(s) for s in shards} == {n // world}
    flat = [r for s in shards for r in s]
    assert len(set(flat)) == len(flat) == (n // world) * world
    other_epoch = [torch.cat([i for _, _, i in _epoch(_loader(data, rank=0, world_size=world, seed=3), 2)]).tolist()]
    assert other_epoch[0] != shards[0]


def test_training_shards_get_different_augmentation():
    data = ImageTensors(torch.full((8, 3, 8, 8), 100, dtype=torch.uint8), torch.zeros(8, dtype=torch.int64), ["a"])
    x0 = _epoch(_loader(data, rank=0, world_size=2, batch_size=4), 0)[0][0]
    x1 = _epoch(_loader(data, rank=1, world_size=2, batch_size=4), 0)[0][0]
    assert not torch.equal(x0, x1)  # identical images, so only the augmentation can differ


def test_invalid_arguments():
    with pytest.raises(ValueError):
        _loader(_data(), rank=2, world_size=2)
    with pytest.raises(ValueError):
        _loader(_data(), batch_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches():
    data = _data()
    for (xc, yc, ic), (xg, yg, ig) in zip(
        _epoch(_loader(data, seed=5), 1), _epoch(_loader(data, seed=5, device="cuda"), 1), strict=True
    ):
        assert xg.is_cuda and yg.is_cuda and ig.is_cuda
        assert torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu()) and torch.equal(ic, ig.cpu())
