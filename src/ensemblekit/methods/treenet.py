"""``treenet``: a shared trunk and M branches (Lee, Purushwalkam, Cogswell, Crandall & Batra, 2015).

"Why M Heads are Better than One: Training a Diverse Ensemble of Deep Networks" (arXiv 1511.06314): the first
layers are shared by all members, the remaining ones are duplicated into M independent branches, each with its own
classifier. Here the split is at a stage boundary of the backbone: the trunk is the stem and the first
``shared_stages`` stages, branch i is the remaining stages and the head of an independently initialised backbone.
Training is one joint stage whose loss sums the branches' cross-entropies, L = Σ_i CE(z_i, y) (``branch_loss:
sum``, the paper's choice, so the trunk accumulates every branch's gradient); prediction averages the branches'
softmax probabilities. Parameters and FLOPs grow with the branched fraction only.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ensemblekit.config import Config
from ensemblekit.ensemble import Ensemble
from ensemblekit.errors import config_error
from ensemblekit.methods.base import METHODS, NEEDS_STAGES, Method, MethodOptions
from ensemblekit.training.stage import Stage, stage_from_train


class TreeNetOptions(MethodOptions):
    """Options of ``treenet``.

    Attributes:
        members: Number of branches M.
        shared_stages: Backbone stages in the shared trunk (the stem is always shared); 0 shares only the stem,
            the backbone's stage count shares everything but the classifier heads.
        branch_loss: ``sum`` (Lee et al.) or ``mean`` of the branches' cross-entropies.
    """

    members: int = 4
    shared_stages: int = Field(default=1, ge=0)
    branch_loss: Literal["sum", "mean"] = "sum"


class TreeNetEnsemble(Ensemble):
    """``forward(x) = stack_i(branch_i(trunk(x)))``, ``[M, B, C]``.

    Args:
        trunk: The shared layers.
        branches: One module per member mapping trunk features to logits.
    """

    def __init__(self, trunk: nn.Module, branches: list[nn.Module]) -> None:
        super().__init__()
        self.trunk = trunk
        self.branches = nn.ModuleList(branches)

    @property
    def num_members(self) -> int:
        return len(self.branches)

    def member_modules(self) -> list[nn.Module]:
        """Member i = trunk + branch i (the trunk's parameters count once per member in ``params``)."""
        return [nn.Sequential(self.trunk, branch) for branch in self.branches]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return torch.stack([branch(h) for branch in self.branches], dim=0)


def check_shared_stages(shared: int, stages: int) -> None:
    """Refuse a trunk of more stages than the backbone has."""
    if shared > stages:
        raise config_error("method.shared_stages", f"the backbone has {stages} stages, got {shared}")


@METHODS.register("treenet")
class TreeNet(Method):
    """Shared trunk of the first stages, M branches of the rest (Lee et al., 2015)."""

    Options = TreeNetOptions
    summary = "shared trunk + M branches, summed loss (Lee et al., 2015)"
    requires = NEEDS_STAGES

    @classmethod
    def check_config(cls, cfg: Config, options: TreeNetOptions) -> None:
        """A backbone with stages (built in, or ``model.stages``), at least ``shared_stages`` of them."""
        stages = cls.split_stage_count(cfg)
        if stages is not None:  # else checked when the backbone is built
            check_shared_stages(options.shared_stages, stages)

    def build(self) -> Ensemble:
        backbones = [self.backbone() for _ in range(self.options.members)]
        s = self.options.shared_stages
        check_shared_stages(s, len(backbones[0].stages))
        trunk = nn.Sequential(backbones[0].stem, *backbones[0].stages[:s])
        branches = [nn.Sequential(*b.stages[s:], b.head) for b in backbones]
        return TreeNetEnsemble(trunk, branches)

    def recipe(self, ensemble: Ensemble) -> list[Stage]:
        return [
            stage_from_train(
                "joint", ensemble, self.cfg.train, data_seed=self.member_seed(0), member_loss=self.options.branch_loss
            )
        ]
