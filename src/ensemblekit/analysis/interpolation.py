"""Linear interpolation between two members in parameter space (MixtureEnsembles, section 5.3).

MixtureEnsembles: "MixtureEnsembles: Leveraging Parameter Sharing for Efficient Ensembles", anonymous ICLR
submission (docs/methods/mixture.md).

For members a and b with parameters θ_a, θ_b the path θ(λ) = (1 − λ)·θ_a + λ·θ_b, λ ∈ [0, 1], is evaluated on
a data split. As in the paper (after Fort et al. 2019 and Neyshabur et al. 2020), BatchNorm runs in train
mode (normalising with each batch's statistics), because accumulated running statistics mean nothing at
interpolated points; everything else (dropout) runs in eval mode. A dip in accuracy between the end points
(a loss barrier) says the members sit in different basins, i.e. are diverse.

Ensembles opt in through the small :class:`MemberParameters` protocol: ``member_state(i)`` returns member i's
own parameters by name, ``load_member_state(i, state)`` writes such a dict into member i, and
``member_forward(i, x)`` runs member i alone. :class:`~ensemblekit.ensemble.MemberEnsemble` (deep ensembles)
and :class:`~ensemblekit.methods.mixture.MixtureEnsemble` (coefficients α and BatchNorm γ/β; interpolating
α is interpolating the member weights because the templates are shared) implement it. The ensemble is
restored (parameters, buffers, train/eval flags) afterwards.

Example:
    >>> points = interpolate_members(ens, 0, 1, data.test, data.mean, data.std, points=11)  # doctest: +SKIP
    >>> [(p["lambda"], p["accuracy"]) for p in points]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ensemblekit.data import BatchLoader, ImageTensors
from ensemblekit.errors import UserError


@runtime_checkable
class MemberParameters(Protocol):
    """An ensemble whose members' own parameters can be read, written and run one member at a time."""

    num_members: int

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        """Copies of member ``i``'s own parameters, by name."""
        ...

    def load_member_state(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Write ``state`` (as returned by :meth:`member_state`) into member ``i``."""
        ...

    def member_forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` of member ``i``."""
        ...


def _bn_train_mode(module: nn.Module) -> None:
    module.eval()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()


@torch.no_grad()
def evaluate_member(
    ensemble: MemberParameters,
    i: int,
    data: ImageTensors,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 500,
    bn_train: bool = True,
) -> dict[str, float]:
    """Accuracy and NLL of member ``i`` on ``data`` (BatchNorm in train mode by default).

    Batches are the split's rows in order (no augmentation), so batch statistics are reproducible. Train-mode
    BatchNorm updates running statistics; :func:`interpolate_members` restores them, a direct caller should
    restore them itself if it cares.

    Returns:
        ``{"accuracy": ..., "nll": ...}`` (NLL = mean cross-entropy of the member's softmax).
    """
    device = next(ensemble.parameters()).device
    loader = BatchLoader(data, batch_size, mean=mean, std=std, shuffle=False, augment=False, device=device)
    modes = [(m, m.training) for m in ensemble.modules()]
    _bn_train_mode(ensemble) if bn_train else ensemble.eval()
    correct, nll, n = 0, 0.0, 0
    try:
        for x, y in loader:
            logits = ensemble.member_forward(i, x).float()
            correct += int((logits.argmax(-1) == y).sum())
            nll += float(F.cross_entropy(logits, y, reduction="sum"))
            n += len(y)
    finally:
        for m, mode in modes:
            m.training = mode
    return {"accuracy": correct / max(1, n), "nll": nll / max(1, n)}


def interpolate_members(
    ensemble: MemberParameters,
    a: int,
    b: int,
    data: ImageTensors,
    mean: Sequence[float],
    std: Sequence[float],
    points: int = 11,
    *,
    batch_size: int = 500,
) -> list[dict[str, float]]:
    """Accuracy and NLL along θ(λ) = (1 − λ)θ_a + λθ_b, λ = linspace(0, 1, points), BatchNorm in train mode.

    θ(λ) is loaded into member ``a``'s slot and evaluated there; at λ = 0 that is member a, at λ = 1 member b.

    Args:
        ensemble: An ensemble implementing :class:`MemberParameters`.
        a: First member.
        b: Second member.
        data: The split to evaluate on.
        mean: Normalisation mean of the data set.
        std: Normalisation standard deviation.
        points: Number of λ values (≥ 2).
        batch_size: Evaluation batch size (also the BatchNorm batch).

    Returns:
        ``[{"lambda": λ, "accuracy": ..., "nll": ...}, ...]`` in order of λ (plain floats, ready to plot).

    Raises:
        UserError: if the ensemble does not implement the protocol or the indices are invalid.
    """
    if not isinstance(ensemble, MemberParameters):
        raise UserError(f"{type(ensemble).__name__} does not expose per-member parameters (member_state)")
    m = ensemble.num_members
    if not (0 <= a < m and 0 <= b < m) or a == b:
        raise UserError(f"need two different members in [0, {m}), got {a} and {b}")
    if points < 2:
        raise UserError(f"points must be >= 2, got {points}")
    backup = {k: v.detach().clone() for k, v in ensemble.state_dict().items()}
    theta_a, theta_b = ensemble.member_state(a), ensemble.member_state(b)
    if {k: v.shape for k, v in theta_a.items()} != {k: v.shape for k, v in theta_b.items()}:
        raise UserError(f"members {a} and {b} have different architectures; interpolation needs equal shapes")
    results = []
    try:
        for lam in torch.linspace(0.0, 1.0, points).tolist():
            state = {k: (1.0 - lam) * theta_a[k] + lam * theta_b[k] for k in theta_a}
            ensemble.load_member_state(a, state)
            scores = evaluate_member(ensemble, a, data, mean, std, batch_size=batch_size)
            results.append({"lambda": float(lam), **scores})
    finally:
        ensemble.load_state_dict(backup)
    return results
