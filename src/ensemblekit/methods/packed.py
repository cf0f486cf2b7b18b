"""``packed``: Packed-Ensembles (Laurent et al., "Packed-Ensembles for Efficient Uncertainty Estimation", ICLR 2023).

M members of width α·C/M (C: the backbone's channels, α the width multiplier) run as one network whose layers are
grouped convolutions (:mod:`ensemblekit.layers.packed_ensemble`): the first layer reads the shared image, every
later convolution has ``groups = M·γ'`` so member i sees only its own channels, and the classifier maps each
member's features to its logits, giving ``[M, B, K]``. The members are M independent networks of the narrower
backbone run in one pass (``tests/methods/test_packed.py`` checks the equality in float64).

Subgroups (γ), as in the official ResNet code (torch-uncertainty ``models/classification/resnet/packed.py``): the
stem and the first convolution of every residual block use γ' = 1; the block's second convolution and its
projection shortcut use γ' = the largest divisor ≤ γ of the member's channels that leaves at least
``min_group_channels`` input channels per subgroup (torch-uncertainty's ``minimum_channels_per_group`` = 64).

Cost per convolution: (α²/(M·γ'))·C_in·C_out·k² parameters and multiply-adds per position (the stem α·3·C·k², the
classifier α·C·K), so α = 2, M = 4 costs about one backbone. Training: all members see the same batches in one
pass; loss (1/M) Σ_i CE(z_i, y) (``train.member_loss``, default ``mean`` as in torch-uncertainty's routine);
prediction p̄(y|x) = (1/M) Σ_i softmax(z_i(x)).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from pydantic import Field

from ensemblekit.config import Config
from ensemblekit.ensemble import Ensemble
from ensemblekit.errors import UserError, config_error
from ensemblekit.layers.packed import ForwardState, replace_zero_pad_shortcuts
from ensemblekit.layers.packed_ensemble import (
    PackedConv2d,
    PackedEnsembleLayers,
    copy_member,
    effective_subgroups,
    member_rows,
    with_subgroups,
)
from ensemblekit.methods.base import METHODS, Method, MethodOptions, meta_backbone
from ensemblekit.models import Backbone, ResNetSpec, build_model, scale_channels
from ensemblekit.models.preact_resnet import PreActBlock
from ensemblekit.models.resnet_cifar import BasicBlock
from ensemblekit.models.shortcuts import ProjectionShortcut
from ensemblekit.training.stage import Stage, stage_from_train

PACKABLE_FAMILIES: tuple[str, ...] = ("resnet", "preact_resnet", "wide_resnet")


def check_packable(family: str) -> None:
    """Refuse a backbone family other than the residual ones (a config error: the model does not fit ``packed``)."""
    if family not in PACKABLE_FAMILIES:
        raise config_error(
            "model.name",
            f"packed supports residual backbones (resnet*, resnet18/preact_resnet, wrn*), not family {family!r}",
        )


def member_spec(spec: ResNetSpec, alpha: float, members: int) -> ResNetSpec:
    """One member's architecture: every channel count of ``spec`` times α/M (rounded half up, at least 1).

    Raises:
        UserError: for a backbone family other than the residual ones.
    """
    check_packable(spec.family)
    scale = alpha / members
    return replace(
        spec,
        stem_channels=scale_channels(spec.stem_channels, scale),
        stage_channels=tuple(scale_channels(c, scale) for c in spec.stage_channels),
    )


def build_packed_network(spec: ResNetSpec, members: int, gamma: int = 1, min_group_channels: int = 64) -> Backbone:
    """The packed network of M members of architecture ``spec`` (the module docstring gives the rules).

    Args:
        spec: One member's spec (:func:`member_spec`); ``net.spec`` is this spec.
        members: M.
        gamma: Requested subgroups γ per member convolution.
        min_group_channels: Smallest number of input channels of a subgroup.

    Returns:
        The initialised network mapping ``[B, 3, H, W]`` to ``[B, M·K]`` (member-major).
    """
    if spec.family not in PACKABLE_FAMILIES:
        raise UserError(f"packed supports residual backbones, not family {spec.family!r}")
    layers = PackedEnsembleLayers(members)
    net = build_model(spec, layers=layers)
    if net.stem.conv is not layers.stem:
        raise RuntimeError("the first convolution the backbone created is not its stem")
    state = ForwardState(members)
    state.packed = True  # zero-pad shortcuts pad each member's channel block
    replace_zero_pad_shortcuts(net, state)
    for block in net.modules():
        if not isinstance(block, BasicBlock | PreActBlock):
            continue
        owners = [(block, "conv2")]
        if isinstance(block.shortcut, ProjectionShortcut):
            owners.append((block.shortcut, "conv"))
        for owner, attr in owners:
            conv = getattr(owner, attr)
            g = effective_subgroups(conv.member_in, conv.member_out, gamma, min_group_channels)
            if g > 1:
                setattr(owner, attr, with_subgroups(conv, g))
    for module in net.modules():
        if isinstance(module, PackedConv2d):
            module.reset_parameters()  # the backbone's init_weights used the fan-out of all M members
    return net


class PackedEnsembleNet(Ensemble):
    """A Packed-Ensemble: ``forward(x) -> [M, B, K]`` from one pass of the packed network.

    Args:
        net: The packed network (:func:`build_packed_network`); ``net.spec`` is one member's spec.
        members: M.
        gamma: The requested subgroups γ.
        min_group_channels: The subgroup rule's minimum.
    """

    def __init__(self, net: Backbone, members: int, gamma: int, min_group_channels: int) -> None:
        super().__init__()
        self.net = net
        self._num_members, self.gamma, self.min_group_channels = members, gamma, min_group_channels

    @property
    def num_members(self) -> int:
        return self._num_members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Member logits ``[M, B, K]`` for images ``[B, 3, H, W]``."""
        return self.net(x).view(x.shape[0], self.num_members, -1).transpose(0, 1)

    def member_network(self, i: int) -> Backbone:
        """Member ``i`` as a stand-alone network (a copy: a one-member packed network of the member spec)."""
        member = build_packed_network(self.net.spec, 1, self.gamma, self.min_group_channels)
        reference = next(self.net.parameters())
        return copy_member(self.net, i, member.to(device=reference.device, dtype=reference.dtype))

    # Per-member parameters (the protocol of ensemblekit.analysis.interpolation): member i owns its rows.
    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        """Copies of member ``i``'s parameters (its rows of every packed layer), by name."""
        state = {}
        for name, module in self.net.named_modules():
            rows = member_rows(module, i)
            if rows is not None:
                for key, p in module.named_parameters(recurse=False):
                    state[f"{name}.{key}"] = p.detach()[rows].clone()
        return state

    @torch.no_grad()
    def load_member_state(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Write a :meth:`member_state` dict into member ``i``'s rows."""
        modules = dict(self.net.named_modules())
        for key, value in state.items():
            name, attr = key.rsplit(".", 1)
            module = modules[name]
            getattr(module, attr)[member_rows(module, i)] = value

    def member_forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` of member ``i`` (members are independent, so its slice of the packed pass)."""
        return self(x)[i]


class PackedOptions(MethodOptions):
    """Options of ``packed`` (defaults: torch-uncertainty's CIFAR ResNet-18/50 and WRN-28-10 configs).

    Attributes:
        members: M, the number of estimators (4).
        alpha: α, the width multiplier: each member has α/M of the backbone's channels (2).
        gamma: γ, subgroups of each member's grouped convolutions (2; 1 = no subgroups).
        min_group_channels: A convolution keeps fewer subgroups when a subgroup would see fewer input channels
            than this (64, torch-uncertainty's ``minimum_channels_per_group``).
    """

    members: int = Field(default=4, ge=1)
    alpha: float = Field(default=2.0, gt=0)
    gamma: int = Field(default=2, ge=1)
    min_group_channels: int = Field(default=64, ge=1)


@METHODS.register("packed")
class Packed(Method):
    """M narrower members packed into one network of grouped convolutions, trained and run in one pass."""

    Options = PackedOptions
    summary = "M members as one network of grouped convolutions, width x alpha (Laurent et al., 2023)"
    requires = "it builds grouped convolutions from an ensemblekit architecture spec (use a built-in model)"

    @classmethod
    def check_config(cls, cfg: Config, options: PackedOptions) -> None:
        """An ensemblekit backbone of a residual family (grouped convolutions are built from its spec)."""
        cls.refuse_custom_model(cfg)
        net = meta_backbone(cfg)
        if net is not None:
            check_packable(net.spec.family)

    def build(self) -> Ensemble:
        o = self.options
        with torch.device("meta"):  # only the configured architecture is needed (no weights, no RNG draws)
            spec = member_spec(self.backbone().spec, o.alpha, o.members)
        net = build_packed_network(spec, o.members, o.gamma, o.min_group_channels)
        return PackedEnsembleNet(net, o.members, o.gamma, o.min_group_channels)

    def recipe(self, ensemble: Ensemble) -> list[Stage]:
        return [stage_from_train("train", ensemble, self.cfg.train, data_seed=self.member_seed(0))]
