"""Keep a subset of a data set's classes, with labels remapped to ``0..k-1`` (``data.classes``).

This is the in-distribution side of the held-out-classes OOD protocol: train on some classes, then score
the test images of the others as out-of-distribution (``ensemblekit evaluate RUN --ood heldout``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ensemblekit.data.tensors import ImageTensors
from ensemblekit.errors import UserError


def check_classes(classes: Sequence[int], num_classes: int, name: str = "the data set") -> list[int]:
    """Validate a class selection: non-empty, distinct integers in ``[0, num_classes)``.

    Raises:
        UserError: one line naming the problem.
    """
    out = list(classes)
    if not out:
        raise UserError("data.classes must list at least one class")
    for c in out:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_classes:
            raise UserError(f"data.classes: {c!r} is not a class of {name} (0..{num_classes - 1})")
    if len(set(out)) != len(out):
        raise UserError(f"data.classes has repeated classes: {out}")
    return out


def select_classes(split: ImageTensors, classes: Sequence[int]) -> ImageTensors:
    """The rows of ``split`` whose label is in ``classes``; label ``classes[j]`` becomes ``j``.

    Rows keep their order; class names follow the new labels (``names[j] = split.classes[classes[j]]``).
    """
    classes = list(classes)
    lookup = torch.full((len(split.classes),), -1, dtype=torch.int64)
    lookup[torch.tensor(classes, dtype=torch.int64)] = torch.arange(len(classes))
    new = lookup[split.labels]
    keep = torch.nonzero(new >= 0).flatten()
    return ImageTensors(split.images[keep], new[keep], [split.classes[c] for c in classes])


def complement(classes: Sequence[int], num_classes: int) -> list[int]:
    """The classes of ``0..num_classes-1`` not in ``classes``, in increasing order."""
    chosen = set(classes)
    return [c for c in range(num_classes) if c not in chosen]
