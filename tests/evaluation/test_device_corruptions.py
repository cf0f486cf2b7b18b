"""Corruptions generated on the run's device from the same CPU random streams."""

import pytest
import torch

from ensemblekit.data import load_data
from ensemblekit.data.corruptions import corrupt, list_corruptions
from ensemblekit.evaluation.corrupted import CHUNK, chunk_generator, corrupted_split


def _split(n: int = 12):
    return load_data("synthetic", train_size=16, test_size=n).test


@pytest.mark.parametrize("name", ["gaussian_noise", "glass_blur", "frost"])
def test_a_corrupted_split_is_the_chunks_corrupted_with_their_own_generators(name):
    split = _split()
    out = corrupted_split(split, name, 3, seed=5, device="cpu")
    expected = corrupt(split.images[:CHUNK], name, 3, chunk_generator(5, name, 3, 0))
    assert out.images.device.type == "cpu" and torch.equal(out.images, expected)
    assert torch.equal(out.labels, split.labels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list_corruptions())
def test_cuda_corrupts_like_the_cpu_up_to_rounding(name):
    split = _split(64)
    cpu = corrupted_split(split, name, 4, seed=1, device="cpu").images.int()
    gpu = corrupted_split(split, name, 4, seed=1, device="cuda")
    assert gpu.images.is_cuda
    diff = (gpu.images.cpu().int() - cpu).abs()
    # float rounding may move a truncated uint8 value by one level; random draws are shared, so nothing more
    assert diff.float().mean() < 0.05 and (diff > 2).float().mean() < 0.01, name
