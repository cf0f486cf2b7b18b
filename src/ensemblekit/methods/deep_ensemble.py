"""``deep_ensemble``: M independently initialised members (Lakshminarayanan et al., 2017).

Each member has its own initialisation and its own data order and is trained with the config's ``train``
recipe; predictions average the members' softmax probabilities, p̄(y|x) = (1/M) Σ_i softmax(z_i(x)).
Training cost: M× a single model; inference and parameters: M×.
"""

from __future__ import annotations

from typing import Literal

from ensemblekit.ensemble import Ensemble, MemberEnsemble
from ensemblekit.methods.base import METHODS, Method, MethodOptions
from ensemblekit.training.stage import Stage, stage_from_train


class DeepEnsembleOptions(MethodOptions):
    """Options of ``deep_ensemble``.

    Attributes:
        members: Number of members M.
        training: ``sequential`` trains members one after another (memory of one member, each with its own
            data order: the faithful deep ensemble); ``joint`` trains all members in one module on the same
            batches (as torch-uncertainty does), loss reduced over members by ``train.member_loss``.
    """

    members: int = 4
    training: Literal["sequential", "joint"] = "sequential"


@METHODS.register("deep_ensemble")
class DeepEnsemble(Method):
    """M independent members, mean of softmax probabilities."""

    Options = DeepEnsembleOptions
    summary = "M independent members (Lakshminarayanan et al., 2017)"

    def build(self) -> Ensemble:
        return MemberEnsemble([self.backbone() for _ in range(self.options.members)])

    def recipe(self, ensemble: Ensemble) -> list[Stage]:
        train = self.cfg.train
        if self.options.training == "joint":
            return [stage_from_train("joint", ensemble, train, data_seed=self.member_seed(0))]
        return [
            stage_from_train(f"member_{i}", member, train, data_seed=self.member_seed(i), needs=())
            for i, member in enumerate(ensemble.members)
        ]
