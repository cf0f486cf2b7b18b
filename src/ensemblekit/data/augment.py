"""Batched tensor augmentation and normalisation: whole batches in a few vectorised ops, no Python loop.

The training augmentation is the standard CIFAR one (He et al., 2016): pad the raw ``uint8`` pixels with
``padding`` zeros on every side (as torchvision's ``RandomCrop(32, padding=4)`` does), take a random
``H x W`` window, flip it horizontally with probability 1/2, then normalise per channel:
``x = (pixel / 255 - mean[c]) / std[c]``. Crop and flip are one ``gather`` on the padded batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check_uint8(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 images [B, C, H, W], got {images.dtype} {tuple(images.shape)}")


def normalization_constants(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, float32 ``[1, C, 1, 1]`` on ``device``: ``pixel·scale - shift = (pixel/255 - mean)/std``.

    scale = 1/(255·std) and shift = mean/std, rounded to float32 from float64. Build them once per loader: on an
    accelerator every construction is a host-to-device copy.
    """
    std64 = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std64)).to(torch.float32).view(1, -1, 1, 1)
    shift = (torch.tensor(mean, dtype=torch.float64) / std64).to(torch.float32).view(1, -1, 1, 1)
    return scale.to(device), shift.to(device)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    constants: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Convert ``uint8 [B, C, H, W]`` pixels to float32 ``(pixel / 255 - mean[c]) / std[c]``.

    Args:
        images: ``uint8`` batch.
        mean: Per-channel mean of pixels scaled to ``[0, 1]``.
        std: Per-channel standard deviation of pixels scaled to ``[0, 1]``.
        constants: ``normalization_constants(mean, std, images.device)``, when the caller keeps them.

    Returns:
        A new ``float32`` tensor of the same shape, on the same device.
    """
    _check_uint8(images)
    if len(mean) != images.shape[1] or len(std) != images.shape[1]:
        raise ValueError(f"mean and std need {images.shape[1]} values, got {len(mean)} and {len(std)}")
    scale, shift = constants if constants is not None else normalization_constants(mean, std, images.device)
    return images.to(torch.float32).mul_(scale).sub_(shift)


def crop_flip_params(
    batch: int, padding: int, flip: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw the random window offsets and flips of one batch (in this order: rows, columns, flips).

    Args:
        batch: Number of images.
        padding: Zero padding on each side; offsets are drawn in ``[0, 2 * padding]``.
        flip: Whether to draw flips (probability 1/2); if not, no flip and no draw.
        generator: Source of randomness (its device is used).

    Returns:
        ``(row offsets int64 [B], column offsets int64 [B], flips bool [B])``.
    """
    device = generator.device
    rows = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device)
    cols = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device)
    if flip:
        flips = torch.rand(batch, generator=generator, device=device) < 0.5
    else:
        flips = torch.zeros(batch, dtype=torch.bool, device=device)
    return rows, cols, flips


def crop_flip(
    images: torch.Tensor, padding: int, rows: torch.Tensor, cols: torch.Tensor, flips: torch.Tensor
) -> torch.Tensor:
    """Window ``[rows[b] : rows[b] + H, cols[b] : cols[b] + W]`` of each zero-padded image, flipped where asked.

    Args:
        images: ``uint8 [B, C, H, W]``.
        padding: Zero padding on each side before cropping.
        rows: Row offsets into the padded image, ``[B]`` in ``[0, 2 * padding]``.
        cols: Column offsets, likewise.
        flips: ``bool [B]``; flipped windows are mirrored left-right.

    Returns:
        ``uint8 [B, C, H, W]``.
    """
    _check_uint8(images)
    b, c, h, w = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    rows, cols, flips = rows.to(device), cols.to(device), flips.to(device)
    ar_h = torch.arange(h, device=device)
    ar_w = torch.arange(w, device=device)
    col_index = cols[:, None] + torch.where(flips[:, None], w - 1 - ar_w, ar_w)
    flat = (rows[:, None, None] + ar_h[:, None]) * (w + 2 * padding) + col_index[:, None, :]
    index = flat.view(b, 1, h * w).expand(b, c, h * w)
    return padded.view(b, c, -1).gather(2, index).view(b, c, h, w)


def augment_batch(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator,
    padding: int = 4,
    flip: bool = True,
    constants: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Random crop with zero padding, random horizontal flip and normalisation of a whole batch.

    Args:
        images: ``uint8 [B, C, H, W]`` (any device; random draws happen on ``generator``'s device).
        mean: Per-channel mean of pixels scaled to ``[0, 1]``.
        std: Per-channel standard deviation of pixels scaled to ``[0, 1]``.
        generator: Source of randomness; the same generator state gives the same output.
        padding: Zero padding on each side (0: no crop).
        flip: Whether to flip horizontally with probability 1/2.
        constants: Normalisation constants on the images' device (see :func:`normalization_constants`).

    Returns:
        Normalised ``float32 [B, C, H, W]`` on the device of ``images``.
    """
    _check_uint8(images)
    rows, cols, flips = crop_flip_params(images.shape[0], padding, flip, generator)
    return normalize(crop_flip(images, padding, rows, cols, flips), mean, std, constants)
