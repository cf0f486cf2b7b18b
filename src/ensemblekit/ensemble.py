"""The ensemble contract shared by every method.

An ensemble is an ``nn.Module`` whose ``forward(x)`` returns per-member logits shaped ``[M, B, C]``.
It declares ``num_members`` and a ``combine`` rule:

* ``"probs"`` (default): p̄(y|x) = (1/M) Σ_i softmax(z_i(x)) — deep ensembles, BatchEnsemble, MIMO,
  MixtureEnsembles.
* ``"logits"``: p̃(y|x) = softmax((1/M) Σ_i z_i(x)) — Network Fission Ensembles (Lee & Lee, 2024).

``predict(ensemble, x)`` applies the rule and returns combined probabilities ``[B, C]``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> ens = MemberEnsemble([nn.Linear(4, 3) for _ in range(2)])
    >>> ens(torch.randn(5, 4)).shape
    torch.Size([2, 5, 3])
    >>> predict(ens, torch.randn(5, 4)).shape
    torch.Size([5, 3])
"""

from __future__ import annotations

import torch
from torch import nn

from ensemblekit.metrics.combine import COMBINE_RULES, Combine


def combine_logits(member_logits: torch.Tensor, combine: Combine = "probs") -> torch.Tensor:
    """Combine per-member logits ``[M, B, C]`` into ensemble probabilities ``[B, C]``.

    Args:
        member_logits: Logits of every member, ``[M, B, C]``.
        combine: ``"probs"`` averages softmax probabilities, ``"logits"`` averages logits then applies softmax.

    Returns:
        Combined class probabilities ``[B, C]`` (float32 or the input's floating dtype).
    """
    if member_logits.dim() != 3:
        raise ValueError(f"member logits must be [M, B, C], got shape {tuple(member_logits.shape)}")
    if combine == "probs":
        return member_logits.float().softmax(dim=-1).mean(dim=0)
    if combine == "logits":
        return member_logits.float().mean(dim=0).softmax(dim=-1)
    raise ValueError(f"unknown combine rule {combine!r}; valid: {', '.join(COMBINE_RULES)}")


class Ensemble(nn.Module):
    """Base class of every ensemble: ``forward(x) -> [M, B, C]`` member logits.

    Subclasses set ``num_members`` and may override ``combine``.
    """

    combine: Combine = "probs"

    @property
    def num_members(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def member_modules(self) -> list[nn.Module] | None:
        """The members as separate modules when they exist separately (else ``None``)."""
        return None


class MemberEnsemble(Ensemble):
    """M separate member networks run one after another (a deep ensemble's layout).

    Members may have different architectures (MotherNets); each must map ``[B, ...] -> [B, C]``.

    Args:
        members: The member networks.
        combine: How members' outputs are combined (see module docstring).
    """

    def __init__(self, members: list[nn.Module] | nn.ModuleList, combine: Combine = "probs") -> None:
        super().__init__()
        if len(members) == 0:
            raise ValueError("an ensemble needs at least one member")
        if combine not in COMBINE_RULES:
            raise ValueError(f"unknown combine rule {combine!r}; valid: {', '.join(COMBINE_RULES)}")
        self.members = nn.ModuleList(members)
        self.combine = combine

    @property
    def num_members(self) -> int:
        return len(self.members)

    def member_modules(self) -> list[nn.Module]:
        return list(self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members], dim=0)

    # Per-member parameters (the protocol of ensemblekit.analysis.interpolation).
    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        """Copies of member ``i``'s parameters by name (for parameter-space interpolation)."""
        return {name: p.detach().clone() for name, p in self.members[i].named_parameters()}

    @torch.no_grad()
    def load_member_state(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Write a :meth:`member_state` dict into member ``i`` (shapes must match member i's parameters)."""
        params = dict(self.members[i].named_parameters())
        for name, value in state.items():
            params[name].copy_(value)

    def member_forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` of member ``i`` alone."""
        return self.members[i](x)


@torch.no_grad()
def predict(ensemble: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Return the ensemble's combined class probabilities ``[B, C]`` for inputs ``x``.

    The ensemble is evaluated as it is (call ``.eval()`` first for deterministic BN/dropout).
    """
    logits = ensemble(x)
    if logits.dim() == 2:  # a plain single network
        logits = logits.unsqueeze(0)
    return combine_logits(logits, getattr(ensemble, "combine", "probs"))
