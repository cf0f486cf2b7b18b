"""The loader's device pipeline: per-epoch (not per-batch) host-device copies, pure epochs, no syncs on CUDA."""

import pytest
import torch

from ensemblekit.data import BatchLoader, load_data
from ensemblekit.data.loader import device_tensors


def _loader(data, device, **kw):
    kw = {"shuffle": True, "augment": True, "seed": 3, **kw}
    return BatchLoader(data.train, 16, mean=data.mean, std=data.std, device=device, **kw)


@pytest.fixture
def transfers(monkeypatch):
    """Count ``Tensor.to`` calls that move a tensor to another device (the only host-device copies here)."""
    counter = {"n": 0}
    to = torch.Tensor.to

    def counting(self, *args, **kwargs):
        out = to(self, *args, **kwargs)
        counter["n"] += out.device != self.device
        return out

    monkeypatch.setattr(torch.Tensor, "to", counting)
    return counter


@pytest.mark.parametrize("augment", [True, False])
def test_an_epoch_copies_to_the_device_once_not_once_per_batch(transfers, augment):
    data = load_data("synthetic", train_size=160, test_size=16)
    loader = _loader(data, "meta", augment=augment)  # a stand-in accelerator: every copy is counted, none is run
    per_epoch = 1 + (3 if augment else 0)  # the epoch's rows (+ crop rows, columns, flips)
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == 10 and batches[0][0].device.type == "meta"
    # once: images and labels, the normalisation scale and shift; then per_epoch copies per epoch
    assert transfers["n"] == 2 + 2 + 2 * per_epoch
    _loader(data, "meta", augment=augment).set_epoch(0)
    list(_loader(data, "meta", augment=augment))
    assert transfers["n"] == 2 + 2 + 2 * per_epoch + 2 + per_epoch  # the split is not copied again


def test_a_split_is_copied_to_a_device_once_and_shared_by_loaders():
    data = load_data("synthetic", train_size=32, test_size=16)
    first = device_tensors(data.test, torch.device("meta"))
    assert device_tensors(data.test, torch.device("meta"))[0] is first[0]
    assert device_tensors(data.test, torch.device("cpu"))[0] is data.test.images


def test_an_epoch_is_a_pure_function_of_seed_and_epoch():
    data = load_data("synthetic", train_size=96, test_size=16)
    a, b = _loader(data, "cpu"), _loader(data, "cpu")
    b.set_epoch(1)
    list(b)  # b has served another epoch first: no state carries over
    for loader in (a, b):
        loader.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.set_epoch(3)
    assert not torch.equal(next(iter(a))[0], next(iter(b))[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_need_no_host_synchronisation():
    data = load_data("synthetic", train_size=160, test_size=16)
    loader = _loader(data, "cuda")
    list(loader)  # first use copies the split
    loader.set_epoch(1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, _ in loader:
            x.sum()
    finally:
        torch.cuda.set_sync_debug_mode(0)
