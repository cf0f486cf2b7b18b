"""The multi-exit ("fission") network of Network Fission Ensembles (Lee & Lee, 2024).

Lee & Lee, "Network Fission Ensembles for Low-Cost Self-Ensembles", arXiv 2408.02301, 2024 (docs/methods/fission.md).

A backbone ``stem -> stages S_1..S_K -> head`` becomes N paths (exits). Exit k (k = 1..N−1) branches after stage
k of the main path (exit 0); stage s is duplicated for, and its weights split among, the min(s, N) paths that
traverse it; every path has its own head. For K = 3, N = 3 (the official ``train_exit12.py``):

    stem, S_1 (trunk, shared) ─┬─ S_2^0 ─┬─ S_3^0 ─ head_0      (main path, member 0)
                               │         └─ S_3^2 ─ head_2      (exit 2, member 2)
                               └─ S_2^1 ─── S_3^1 ─ head_1      (exit 1, member 1)

Layout: ``stages[s]`` (0-based) is an ``nn.ModuleList`` of min(s + 1, N) copies; path p runs copy p of stage s
when p <= s and the main path's copy 0 before it branches. ``forward`` returns the exit logits ``[N, B, C]``
and the network combines them by averaging logits (``combine = "logits"``: p̃ = softmax(mean_i z_i), as NFE's
evaluation does).

``path_execution`` (``auto`` | ``loop`` | ``packed``) chooses how the copies of a stage run: one after another,
or as one batched pass over stacked parameters (:mod:`ensemblekit.methods.fission.packed_paths`); ``auto``
resolves per device at every forward. Both compute the same function from the same ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ensemblekit.ensemble import Ensemble
from ensemblekit.methods.fission.packed_paths import PathExecution, PathPacker, resolve_path_execution, source_copy


def copies_per_stage(num_stages: int, exits: int) -> list[int]:
    """Number of copies of each stage (0-based s): c_s = min(s + 1, N)."""
    return [min(s + 1, exits) for s in range(num_stages)]


class FissionNetwork(Ensemble):
    """Shared stem and first stage, per-path copies of later stages, one head per path.

    Args:
        stem: The input module.
        stages: ``stages[s]`` is the list of copies of stage s (``len == min(s + 1, N)``).
        heads: One classifier head per path (N heads).
        path_execution: ``loop``, ``packed`` or ``auto`` (packed on CUDA): see the module docstring.
    """

    combine = "logits"  # NFE averages the exits' logits: p̃ = softmax(mean_i z_i) (Lee & Lee, 2024)

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[Sequence[nn.Module]],
        heads: Sequence[nn.Module],
        path_execution: PathExecution = "loop",
    ) -> None:
        super().__init__()
        exits = len(heads)
        if exits < 1:
            raise ValueError("a fission network needs at least one exit")
        if len(stages) < exits:
            raise ValueError(f"{exits} exits need at least {exits} stages, got {len(stages)}")
        expected = copies_per_stage(len(stages), exits)
        if [len(c) for c in stages] != expected:
            raise ValueError(f"copies per stage must be {expected}, got {[len(c) for c in stages]}")
        self.stem = stem
        self.stages = nn.ModuleList(nn.ModuleList(copies) for copies in stages)
        self.heads = nn.ModuleList(heads)
        self.path_execution: PathExecution = path_execution
        self._packer = PathPacker()

    @property
    def num_members(self) -> int:
        return len(self.heads)

    @property
    def num_stages(self) -> int:
        """Number of stages K."""
        return len(self.stages)

    def path_modules(self, path: int) -> list[nn.Module]:
        """The modules path ``path`` runs, in order: stem, one copy per stage, its head."""
        return [
            self.stem,
            *(self.stages[s][source_copy(path, s)] for s in range(self.num_stages)),
            self.heads[path],
        ]

    def forward_path(self, path: int, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` of exit ``path`` alone."""
        for module in self.path_modules(path):
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Exit logits ``[N, B, C]``; the main path's features are computed once and shared by the branches."""
        if resolve_path_execution(self.path_execution, x.device) == "packed":
            return self._packer.forward(self.stem, self.stages, self.heads, x)
        h = self.stem(x)
        main = []
        for copies in self.stages:
            h = copies[0](h)
            main.append(h)
        outs = [self.heads[0](main[-1])]
        for p in range(1, self.num_members):
            h = main[p - 1]
            for s in range(p, self.num_stages):
                h = self.stages[s][p](h)
            outs.append(self.heads[p](h))
        return torch.stack(outs, dim=0)

    def total_parameter_count(self) -> int:
        """Stored parameters (masked zeros included; the sparse count is in the method's extra costs)."""
        return sum(p.numel() for p in self.parameters())
