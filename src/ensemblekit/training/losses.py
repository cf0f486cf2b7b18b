"""Losses of the engine's default stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def member_cross_entropy(
    outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean", label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of every member, averaged over the batch, then reduced over members.

    For ``outputs`` ``[B, C]`` this is plain cross-entropy. For member logits ``[M, B, C]`` it is
    L = (1/M) Σ_i CE(z_i, y) (``reduction="mean"``) or Σ_i CE(z_i, y) (``"sum"``). ``targets`` is ``[B]``
    (the same labels for every member) or ``[M, B]`` (per-member labels, as in MIMO).
    """
    if outputs.dim() == 2:
        return F.cross_entropy(outputs.float(), targets, label_smoothing=label_smoothing)
    m, b, c = outputs.shape
    flat_targets = targets.reshape(-1) if targets.dim() == 2 else targets.repeat(m)
    loss = F.cross_entropy(outputs.float().reshape(m * b, c), flat_targets, label_smoothing=label_smoothing)
    return loss * m if reduction == "sum" else loss
