"""Input checks shared by the metric functions: shapes, dtypes, probability rows and labels.

Every check fails with a one-line ``ValueError`` that names the argument and the shape it got.
"""

from __future__ import annotations

import torch

from ensemblekit.metrics.combine import COMBINE_RULES

# Rows of a probability tensor must sum to 1 within this tolerance; loose enough for float16/bfloat16
# softmax outputs, tight enough to catch logits passed by mistake.
ROW_SUM_TOLERANCE = 1e-2


def as_probabilities(probs: torch.Tensor, name: str, dims: int) -> torch.Tensor:
    """Check that ``probs`` has ``dims`` dimensions of probability rows over the last axis.

    Args:
        probs: Candidate probabilities (a tensor or anything ``torch.as_tensor`` accepts).
        name: The argument's name, used in error messages.
        dims: Required number of dimensions (3 for ``[M, N, C]``, 2 for ``[N, C]``).

    Returns:
        The input as a floating tensor (dtype kept; integer input is cast to float32).

    Raises:
        ValueError: On a wrong shape, an empty axis, or rows that are not probability vectors.
    """
    probs = torch.as_tensor(probs)
    layout = "[M, N, C]" if dims == 3 else "[N, C]"
    if probs.dim() != dims:
        hint = " (use probs.unsqueeze(0) for a single model)" if dims == 3 and probs.dim() == 2 else ""
        raise ValueError(f"{name} must be {layout}, got shape {tuple(probs.shape)}{hint}")
    if probs.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(probs.shape)}")
    if not probs.is_floating_point():
        probs = probs.float()
    if probs.is_meta:
        raise ValueError(f"{name} is on the meta device; metrics need real values")
    row_sums = probs.sum(dim=-1, dtype=torch.float64)  # NaN/inf anywhere in a row makes its sum non-finite
    if not bool(probs.min() >= 0) or not bool(torch.isfinite(row_sums).all()):
        raise ValueError(f"{name} must hold finite, non-negative probabilities (got NaN/inf or negatives)")
    if bool(((row_sums - 1.0).abs() > ROW_SUM_TOLERANCE).any()):
        raise ValueError(f"{name} rows must sum to 1 over classes (pass softmax(logits), not logits)")
    return probs


def as_labels(labels: torch.Tensor, num_samples: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """Check integer class labels ``[N]`` in ``[0, C)`` and return them as ``int64`` on ``device``.

    Raises:
        ValueError: On a wrong shape or dtype, or a label outside ``[0, C)``.
    """
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != num_samples:
        raise ValueError(f"labels must be [N] with N={num_samples}, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.to(device=device, dtype=torch.int64)
    if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
    return labels


def check_combine(combine: str) -> None:
    """Raise a one-line ``ValueError`` unless ``combine`` is a known combination rule."""
    if combine not in COMBINE_RULES:
        raise ValueError(f"unknown combine rule {combine!r}; valid: {', '.join(COMBINE_RULES)}")
