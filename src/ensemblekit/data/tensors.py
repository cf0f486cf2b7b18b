"""The two containers the data package hands out: ``ImageTensors`` (one split) and ``DataBundle`` (a data set).

Images are kept as ``uint8`` tensors shaped ``[N, 3, H, W]`` (4x smaller than float32); conversion to
normalised float32 happens per batch in :mod:`ensemblekit.data.augment`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageTensors:
    """One split of an image data set, held in memory.

    Args:
        images: ``torch.uint8`` tensor ``[N, 3, H, W]``.
        labels: ``torch.int64`` tensor ``[N]`` of class indices.
        classes: Class names; ``classes[k]`` is the name of label ``k``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(f"labels must be int64 [N], got {self.labels.dtype} {tuple(self.labels.shape)}")
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> ImageTensors:
        """The rows ``indices`` (a LongTensor) of this split, as a new ``ImageTensors``."""
        return ImageTensors(self.images[indices], self.labels[indices], list(self.classes))


@dataclass
class DataBundle:
    """A loaded data set: its splits, class names and normalisation statistics.

    Args:
        name: The registered data set name (``"cifar10"``, ``"synthetic"``, ...).
        train: Training split (after holding out ``val`` and sub-sampling).
        val: Validation split held out of the training images, or ``None``.
        test: Test split.
        classes: Class names, indexed by label.
        num_classes: ``len(classes)``.
        mean: Per-channel mean of the pixels scaled to ``[0, 1]``.
        std: Per-channel standard deviation of the pixels scaled to ``[0, 1]``.
        source: Human-readable description of where and how the data was found.
    """

    name: str
    train: ImageTensors
    val: ImageTensors | None
    test: ImageTensors
    classes: list[str]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str

    def describe(self) -> str:
        """One line: name, split sizes and source."""
        val = len(self.val) if self.val is not None else 0
        return (
            f"{self.name}: {len(self.train)} train / {val} val / {len(self.test)} test images, "
            f"{self.num_classes} classes, from {self.source}"
        )
