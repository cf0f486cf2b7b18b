"""Per-channel statistics of uint8 image tensors, and the published ones for CIFAR."""

from __future__ import annotations

import torch

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and standard deviation per channel of ``uint8 [N, C, H, W]`` pixels scaled to ``[0, 1]``.

    Sums are exact integers (int64), computed in chunks to bound memory.

    Returns:
        ``(mean, std)``, one float per channel.
    """
    if images.shape[0] == 0:
        raise ValueError("cannot compute statistics of an empty image set")
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.int64)
    total_sq = torch.zeros(channels, dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].to(torch.int64).transpose(0, 1).reshape(channels, -1)
        total += part.sum(1)
        total_sq += (part * part).sum(1)
    count = images.numel() // channels
    mean = total.double() / count
    var = (total_sq.double() / count - mean * mean).clamp_min(0)
    return tuple((mean / 255).tolist()), tuple((var.sqrt() / 255).tolist())
