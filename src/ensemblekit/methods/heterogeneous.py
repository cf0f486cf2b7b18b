"""Ensembles of different member architectures: the ``architectures`` option and its cost unit.

Methods whose members may differ (``mothernets``, ``distillation``, ``bagging``) accept

.. code-block:: yaml

    method:
      architectures: [{name: resnet20, width: 0.5}, {name: resnet32}, {name: resnet56, width: 1.5}]

Each entry is a registered model name plus that model's keyword options (``width``, ``depth``, ``shortcut``,
...); member i is ``create_model(name, num_classes, **options)``. Without ``architectures`` every member is
the config's ``model``. The ensemble is a :class:`~ensemblekit.ensemble.MemberEnsemble`.

Cost unit: with ``architectures``, :meth:`HeterogeneousMembers.single_backbone` is the *largest member* (the
one with the most inference FLOPs per image; the first on ties), so ``train_epoch_equivalents`` count epochs
of the largest member and ``inference_flops_vs_single`` compares with it (the MotherNets paper's unit: training
time relative to the largest network). ``metrics.json`` records the unit's FLOPs and parameters under
``costs.single_inference_flops`` / ``costs.single_params``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.methods.base import Method, MethodOptions
from ensemblekit.metrics import inference_flops
from ensemblekit.models import check_model_options, create_model


class ArchitectureEntry(BaseModel):
    """One member architecture: ``name`` plus the model's keyword options (any other key)."""

    model_config = ConfigDict(extra="allow")

    name: str

    @property
    def kwargs(self) -> dict[str, Any]:
        """The model's keyword options."""
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _known_model_and_options(self) -> ArchitectureEntry:
        """The name is a registered model and the options are its (checked against its spec when validated)."""
        try:
            check_model_options(self.name, self.kwargs)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return self


class HeterogeneousOptions(MethodOptions):
    """``architectures`` (list of ``{name, **options}``); ``members`` then defaults to its length.

    Attributes:
        architectures: Member architectures; ``None``: ``members`` copies of the config's ``model``.
    """

    architectures: list[ArchitectureEntry] | None = None

    @model_validator(mode="after")
    def _members_match(self) -> HeterogeneousOptions:
        if self.architectures is not None:
            if not self.architectures:
                raise ValueError("architectures: must list at least one member")
            if "members" in self.model_fields_set and self.members != len(self.architectures):
                raise ValueError(f"members: {self.members} differs from len(architectures) ({len(self.architectures)})")
            self.members = len(self.architectures)
        return self


class HeterogeneousMembers(Method):
    """Mixin for methods whose members come from ``options.architectures`` (or the config's model)."""

    def member_backbone(self, i: int) -> nn.Module:
        """A fresh member ``i``."""
        archs = self.options.architectures
        if archs is None:
            return self.backbone()
        entry = archs[i]
        return create_model(entry.name, num_classes=self.num_classes, **entry.kwargs)

    def member_backbones(self) -> list[nn.Module]:
        """Fresh members 0..M-1 (built in order, so the global RNG gives each its own initialisation)."""
        return [self.member_backbone(i) for i in range(self.options.members)]

    def largest_member_index(self) -> int:
        """Index of the member with the most inference FLOPs per image (the first on ties)."""
        archs = self.options.architectures
        if archs is None or len(archs) == 1:
            return 0
        flops = []
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            for i in range(len(archs)):
                model = self.member_backbone(i)
                flops.append(inference_flops(model, (1, getattr(model.spec, "in_channels", 3), 32, 32)))
        return max(range(len(flops)), key=lambda i: (flops[i], -i))

    def single_backbone(self) -> nn.Module:
        """The cost unit: the largest member with ``architectures``, else the config's backbone."""
        if self.options.architectures is None:
            return super().single_backbone()
        with torch.random.fork_rng(devices=[]):
            return self.member_backbone(self.largest_member_index())
