"""``bagging``: every member trained on its own bootstrap resample of the training set (Breiman, 1996).

"Bagging Predictors", Machine Learning 24(2), 1996; the MotherNets paper's slow baseline (docs/methods/bagging.md).
Member i is trained from scratch on N' = round(``sample_fraction`` · N) row indices drawn uniformly with
replacement from the N training images (≈ 63.2 % distinct images for N' = N) by a generator seeded with
(``train.seed``, i), with its own data order; an epoch is one pass over its N' draws, so the cost equals a deep
ensemble's. Prediction averages the members' softmax probabilities. Members may differ (``architectures``).
"""

from __future__ import annotations

import torch
from pydantic import Field

from ensemblekit.ensemble import Ensemble, MemberEnsemble
from ensemblekit.methods.base import METHODS
from ensemblekit.methods.heterogeneous import HeterogeneousMembers, HeterogeneousOptions
from ensemblekit.training.stage import Stage, stage_from_train


class BaggingOptions(HeterogeneousOptions):
    """Options of ``bagging``.

    Attributes:
        architectures: Member architectures (see :mod:`ensemblekit.methods.heterogeneous`).
        sample_fraction: Size of each bootstrap sample relative to the training set.
    """

    sample_fraction: float = Field(default=1.0, gt=0.0)


def bootstrap_indices(n: int, size: int, seed: int) -> torch.Tensor:
    """``size`` row indices drawn uniformly with replacement from ``range(n)`` (int64, seeded)."""
    return torch.randint(0, n, (size,), generator=torch.Generator().manual_seed(seed))


@METHODS.register("bagging")
class Bagging(HeterogeneousMembers):
    """M members, each on a bootstrap resample (Breiman, 1996)."""

    Options = BaggingOptions
    summary = "members on bootstrap resamples (Breiman, 1996)"

    def build(self) -> Ensemble:
        return MemberEnsemble(self.member_backbones())

    def sample_seed(self, i: int) -> int:
        """Seed of member i's bootstrap sample."""
        return self.cfg.train.seed * 1000 + 300 + i

    def recipe(self, ensemble: Ensemble) -> list[Stage]:
        size = max(1, round(self.options.sample_fraction * self.train_size))
        return [
            stage_from_train(
                f"member_{i}",
                member,
                self.cfg.train,
                data_seed=self.member_seed(i),
                train_indices=bootstrap_indices(self.train_size, size, self.sample_seed(i)),
                needs=(),
            )
            for i, member in enumerate(ensemble.members)
        ]
