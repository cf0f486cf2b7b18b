"""Seeded, stratified subsets: validation hold-out, training subset, test subset.

Order of operations in :func:`split_data` (so that the same ``seed`` gives the same subsets everywhere):

1. ``val_size`` images are held out of the full training split (stratified, stream 1 of ``seed``).
2. ``train_size`` images are taken from the remaining training images (stratified, stream 2).
3. ``test_size`` images are taken from the test split (stratified, stream 3).

A ``None`` size keeps everything (``val_size=0`` means no validation split). "Stratified" means each
class gets a count proportional to its frequency, rounded by largest remainder so that the total is
exact; the images within a class are drawn with numpy's PCG64, which is machine-independent. Kept rows
stay in their original order.
"""

from __future__ import annotations

import numpy as np
import torch

from ensemblekit.data.tensors import ImageTensors
from ensemblekit.errors import UserError


def class_quotas(counts: np.ndarray, size: int) -> np.ndarray:
    """Split ``size`` over classes in proportion to ``counts`` (largest remainder, ties to lower class index).

    Args:
        counts: Number of items per class.
        size: Total to distribute, ``0 <= size <= counts.sum()``.

    Returns:
        Per-class counts summing exactly to ``size``, each at most the class's count.
    """
    total = int(counts.sum())
    quotas = counts * size // total if total else np.zeros_like(counts)
    remainders = counts * size % total if total else np.zeros_like(counts)
    short = size - int(quotas.sum())
    order = np.lexsort((np.arange(len(counts)), -remainders))
    quotas[order[:short]] += 1
    return quotas


def stratified_indices(labels: torch.Tensor, size: int, seed: int, *, stream: int = 0) -> torch.Tensor:
    """Indices of a stratified random subset of exactly ``size`` items.

    Args:
        labels: Class labels ``[N]``.
        size: Subset size, ``0 <= size <= N``.
        seed: Non-negative seed; same seed, labels and size give the same subset on every machine.
        stream: Independent sub-stream of ``seed`` (lets several subsets share one seed).

    Returns:
        Sorted ``int64`` indices into ``labels``.

    Raises:
        ValueError: if ``size`` is outside ``[0, N]`` or ``seed`` is negative.
    """
    labels_np = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    if not 0 <= size <= labels_np.shape[0]:
        raise ValueError(f"size must be in [0, {labels_np.shape[0]}], got {size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    _, inverse, counts = np.unique(labels_np, return_inverse=True, return_counts=True)
    quotas = class_quotas(counts, size)
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream])))
    chosen = [members[rng.permutation(len(members))[:quota]] for members, quota in zip(by_class, quotas)]
    picked = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(picked.astype(np.int64))


def _check_size(field: str, size: int | None, available: int, what: str) -> None:
    if size is None:
        return
    if isinstance(size, bool) or not isinstance(size, int) or size < (0 if field == "val_size" else 1):
        low = "a non-negative" if field == "val_size" else "a positive"
        raise UserError(f"{field} must be {low} integer, got {size!r}")
    if size > available:
        raise UserError(f"{field}={size} is larger than the {available} {what}")


def split_data(
    train: ImageTensors,
    test: ImageTensors,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    val_size: int = 0,
    seed: int = 0,
    name: str = "the data set",
) -> tuple[ImageTensors, ImageTensors | None, ImageTensors]:
    """Hold out a validation split, then sub-sample train and test (see the module docstring for the order).

    Args:
        train: The full training split.
        test: The full test split.
        train_size: Training images to keep after the hold-out, or ``None`` for all that remain.
        test_size: Test images to keep, or ``None`` for all.
        val_size: Images held out of ``train`` for validation (0: none).
        seed: Non-negative seed of all three draws.
        name: Data set name, for error messages.

    Returns:
        ``(train, val or None, test)``.

    Raises:
        UserError: if a size is invalid or larger than what is available; the message names the field.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    _check_size("val_size", val_size, len(train), f"training images of {name}")
    val = None
    rest = torch.arange(len(train))
    if val_size:
        held = stratified_indices(train.labels, val_size, seed, stream=1)
        keep = torch.ones(len(train), dtype=torch.bool)
        keep[held] = False
        rest = rest[keep]
        val = train.subset(held)
    left = f"training images of {name} left after holding out val_size={val_size}"
    _check_size("train_size", train_size, len(rest), left)
    if train_size is not None and train_size < len(rest):
        rest = rest[stratified_indices(train.labels[rest], train_size, seed, stream=2)]
    if len(rest) < len(train):
        train = train.subset(rest)
    _check_size("test_size", test_size, len(test), f"test images of {name}")
    if test_size is not None and test_size < len(test):
        test = test.subset(stratified_indices(test.labels, test_size, seed, stream=3))
    return train, val, test
