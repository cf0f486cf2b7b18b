"""Group an ensemble's architectures into g clusters that each share one MotherNet.

MotherNets (Wasay et al., MLSys 2020) clusters the ensemble so that each MotherNet captures as much of its
members' structure as possible; the paper states the goal, not the algorithm. We use the agglomerative rule of
docs/methods/mothernets.md: start from K singletons and repeatedly merge the pair of clusters whose merged MotherNet
keeps the largest share of its members' parameters, |params(MotherNet(C_a ∪ C_b))| / mean_{A in C_a ∪ C_b}
|params(A)|, until g clusters remain. Only compatible architectures (same family, block type, stage count;
:func:`~.mother.mother_spec` succeeds) merge. Ties go to the pair with the smallest indices, so the result is
deterministic. g = K gives singletons (every member is its own MotherNet), g = 1 a single cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

from ensemblekit.errors import UserError
from ensemblekit.models.spec import ModelSpec
from ensemblekit.models.transforms.mother import parameter_share


def cluster_architectures(specs: Sequence[ModelSpec], g: int) -> list[list[int]]:
    """Indices of the members of each of ``g`` clusters (each sorted; clusters ordered by first member).

    Raises:
        UserError: if g is not in [1, K] or incompatible architectures prevent reaching g clusters.
    """
    k = len(specs)
    if not 1 <= g <= k:
        raise UserError(f"method.clusters must be between 1 and the number of members ({k}), got {g}")
    clusters = [[i] for i in range(k)]
    while len(clusters) > g:
        best, best_score = None, -1.0
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                merged = sorted(clusters[a] + clusters[b])
                try:
                    score = parameter_share([specs[i] for i in merged])
                except UserError:
                    continue
                if score > best_score + 1e-12:
                    best, best_score = (a, b), score
        if best is None:
            raise UserError(
                f"cannot form {g} cluster(s): the remaining {len(clusters)} groups of architectures are incompatible "
                f"(different families, block types or stage counts); use method.clusters >= {len(clusters)}"
            )
        a, b = best
        clusters[a] = sorted(clusters[a] + clusters[b])
        del clusters[b]
    return sorted(clusters, key=lambda c: c[0])
