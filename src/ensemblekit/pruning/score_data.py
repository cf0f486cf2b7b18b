"""Data for data-dependent pruning scores: class-balanced samples (GraSP).

Wang, Zhang & Grosse, "Picking Winning Tickets Before Training by Preserving Gradient Flow", ICLR 2020: the
gradient g and the Hessian-gradient product H g are estimated on a batch holding the same number of examples of
every class (``samples_per_class``: 10 for CIFAR-10, 5 for CIFAR-100 in the official configurations, one such
batch per iteration), so that no class dominates the preserved gradient flow.
"""

from __future__ import annotations

import torch

from ensemblekit.errors import UserError


def class_balanced_indices(labels: torch.Tensor, samples_per_class: int, generator: torch.Generator) -> torch.Tensor:
    """Row numbers of ``samples_per_class`` random examples of every class in ``labels``, in random order.

    Every class present in ``labels`` contributes exactly ``samples_per_class`` distinct rows (drawn uniformly
    without replacement from ``generator``); the result is shuffled so that any split of it mixes the classes.

    Raises:
        UserError: a class has fewer than ``samples_per_class`` examples.
    """
    labels = torch.as_tensor(labels).cpu()
    picks = []
    for c in torch.unique(labels, sorted=True).tolist():
        rows = torch.nonzero(labels == c).flatten()
        if len(rows) < samples_per_class:
            raise UserError(
                f"class-balanced scoring batch: class {c} has {len(rows)} training examples, "
                f"fewer than {samples_per_class} per class"
            )
        picks.append(rows[torch.randperm(len(rows), generator=generator)[:samples_per_class]])
    out = torch.cat(picks)
    return out[torch.randperm(len(out), generator=generator)]
