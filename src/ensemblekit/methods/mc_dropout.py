"""``mc_dropout``: Monte-Carlo dropout (Gal & Ghahramani, 2016).

One network is trained with dropout (rate 0.3 between the convolutions of every residual block on CIFAR, as
in the WRN comparison tables); at test time dropout stays active and the softmax outputs of S stochastic
passes are averaged. Cost: 1× training, S× inference, 1× parameters.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ensemblekit.ensemble import Ensemble
from ensemblekit.methods.base import METHODS, Method, MethodOptions
from ensemblekit.training.stage import Stage, stage_from_train


class MCDropoutEnsemble(Ensemble):
    """S stochastic forward passes of one network with its dropout layers active.

    Args:
        net: A network containing ``nn.Dropout`` modules.
        samples: Number of passes S (the ensemble's ``num_members``).
    """

    def __init__(self, net: nn.Module, samples: int) -> None:
        super().__init__()
        if not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in net.modules()):
            raise ValueError("MC dropout needs a network with dropout layers (model.dropout > 0)")
        self.net = net
        self.samples = samples

    @property
    def num_members(self) -> int:
        return self.samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropouts = [m for m in self.net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        modes = [m.training for m in dropouts]
        for m in dropouts:
            m.train()
        try:
            return torch.stack([self.net(x) for _ in range(self.samples)], dim=0)
        finally:
            for m, mode in zip(dropouts, modes):
                m.train(mode)


class MCDropoutOptions(MethodOptions):
    """Options of ``mc_dropout``.

    Attributes:
        members: Number of stochastic test-time passes S (uncertainty-baselines reports S = 30).
        dropout: Dropout rate used when ``model.dropout`` is 0 (0.3 on CIFAR, as in the WRN-28-10 baselines of
            uncertainty-baselines; docs/methods/mc_dropout.md).
    """

    members: int = Field(default=10, gt=0)
    dropout: float = Field(default=0.3, gt=0.0, lt=1.0)


@METHODS.register("mc_dropout")
class MCDropout(Method):
    """One network with dropout; S stochastic passes at test time."""

    Options = MCDropoutOptions
    summary = "dropout kept on at test time, S passes (Gal & Ghahramani, 2016)"

    def build(self) -> Ensemble:
        rate = self.cfg.model.dropout or self.options.dropout  # > 0: method.dropout is validated > 0
        return MCDropoutEnsemble(self.backbone(dropout=rate), self.options.members)

    def recipe(self, ensemble: Ensemble) -> list[Stage]:
        return [stage_from_train("train", ensemble.net, self.cfg.train, data_seed=self.member_seed(0))]
