"""The module of a Subnetwork Ensemble: the parent, every generated child, and which children are members."""

from __future__ import annotations

import torch
from torch import nn

from ensemblekit.ensemble import Combine, Ensemble


class SubnetworkEnsemble(Ensemble):
    """Parent θ_P plus ``candidates`` children; the members are the selected children (and the parent if asked).

    ``forward(x)`` returns ``[M, B, C]``: the selected children in index order, then the parent when
    ``include_parent`` is set (the official Prune-and-Tune evaluation silently includes it; here it is explicit).
    Selection is a buffer (``selected``), so the structure is fixed at build time and ``model.pt`` holds the
    parent: a finished run can grow new children later (``ensemblekit grow``).

    Args:
        parent: The parent backbone.
        children: All generated children (``candidates`` of them).
        members: How many children are members (top-k of the candidates; the first k until selection runs).
        include_parent: Whether the parent is a member too.
        combine: ``probs`` (mean of softmax) or ``logits`` (the Prune-and-Tune evaluation script).
    """

    def __init__(
        self,
        parent: nn.Module,
        children: list[nn.Module],
        members: int,
        include_parent: bool = False,
        combine: Combine = "probs",
    ) -> None:
        super().__init__()
        if not 1 <= members <= len(children):
            raise ValueError(f"members must lie in [1, {len(children)}], got {members}")
        self.parent = parent
        self.child_nets = nn.ModuleList(children)
        self.include_parent = include_parent
        self.combine = combine
        self.register_buffer("selected", torch.arange(members, dtype=torch.long))
        self.register_buffer("val_scores", torch.full((len(children),), float("nan"), dtype=torch.float64))

    @property
    def num_members(self) -> int:
        return int(self.selected.numel()) + int(self.include_parent)

    def member_nets(self) -> list[nn.Module]:
        """The member networks in forward order."""
        nets = [self.child_nets[i] for i in self.selected.tolist()]
        return [*nets, self.parent] if self.include_parent else nets

    def total_parameter_count(self) -> int:
        """Σ over members of their dense parameter counts (unselected candidates and a non-member parent excluded)."""
        return sum(sum(p.numel() for p in net.parameters()) for net in self.member_nets())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(x) for net in self.member_nets()], dim=0)
