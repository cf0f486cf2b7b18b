"""``single``: one backbone, the reference every ensemble is measured against."""

from __future__ import annotations

from pydantic import field_validator

from ensemblekit.ensemble import Ensemble, MemberEnsemble
from ensemblekit.methods.base import METHODS, Method, MethodOptions
from ensemblekit.training.stage import Stage, stage_from_train


class SingleOptions(MethodOptions):
    """``members`` must be 1."""

    members: int = 1

    @field_validator("members")
    @classmethod
    def _one(cls, v: int) -> int:
        if v != 1:
            raise ValueError("a single model has exactly 1 member")
        return v


@METHODS.register("single")
class Single(Method):
    """One network trained with the config's ``train`` recipe (a one-member ensemble)."""

    Options = SingleOptions
    summary = "one backbone (reference)"

    def build(self) -> Ensemble:
        return MemberEnsemble([self.backbone()])

    def recipe(self, ensemble: Ensemble) -> list[Stage]:
        return [stage_from_train("train", ensemble.members[0], self.cfg.train, data_seed=self.member_seed(0))]
