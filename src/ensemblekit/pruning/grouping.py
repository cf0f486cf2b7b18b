"""Weight grouping: split a pruning mask among the paths that share a layer (Network Fission Ensembles).

Lee & Lee, "Network Fission Ensembles for Low-Cost Self-Ensembles" (2024), step 2 ("balanced weight grouping";
docs/methods/fission.md): the surviving weights of every split layer are divided into P disjoint groups, one per
path that traverses the layer.

* :func:`balanced_groups` (the recommended rule): randomly permute the indices of the surviving weights and cut
  the list into P contiguous chunks; sizes differ by at most one, groups are disjoint, their union is the mask.
* :func:`bernoulli_groups` (the official code's rule, made disjoint): each surviving weight goes to path 0 with
  probability 1/P, else to path 1 with probability 1/(P−1), ... (sequential coin flips; for P = 2 exactly the
  code's ½/½ flip). Balanced only in expectation. The code's N = 3 variant, whose groups overlap and contain −1
  entries, is not reproduced.
* :func:`balanced_chunks`: the same permutation-and-cut rule for a list of indices (filters, in the structured
  mode).

All draws come from a CPU ``torch.Generator``, so a grouping is a pure function of the mask and the seed.
"""

from __future__ import annotations

import torch


def balanced_chunks(indices: torch.Tensor, parts: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Randomly permute ``indices`` (1-d) and cut them into ``parts`` chunks whose sizes differ by at most one."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    perm = torch.randperm(len(indices), generator=generator)
    return list(torch.tensor_split(indices[perm], parts))


def balanced_groups(mask: torch.Tensor, parts: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Split the ones of ``mask`` into ``parts`` disjoint masks of sizes differing by at most one (union = mask)."""
    flat = mask.detach().flatten().cpu()
    alive = torch.nonzero(flat > 0).flatten()
    groups = []
    for chunk in balanced_chunks(alive, parts, generator):
        g = torch.zeros_like(flat, dtype=torch.float32)
        g[chunk] = 1.0
        groups.append(g.view(mask.shape).to(mask.device))
    return groups


def bernoulli_groups(mask: torch.Tensor, parts: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Split the ones of ``mask`` by sequential coin flips: P(group k | not in groups < k) = 1 / (parts − k).

    Every surviving weight lands in exactly one group (disjoint, union = mask, no negative entries); each group's
    size is Binomial(n, 1/parts).
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    remaining = (mask.detach().cpu() > 0).float()
    groups = []
    for k in range(parts - 1):
        coin = (torch.rand(mask.shape, generator=generator) < 1.0 / (parts - k)).float()
        take = remaining * coin
        groups.append(take)
        remaining = remaining - take
    groups.append(remaining)
    return [g.to(mask.device) for g in groups]


GROUPINGS = {"balanced": balanced_groups, "bernoulli": bernoulli_groups}
