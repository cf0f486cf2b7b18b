"""CIFAR ResNets of depth 6n+2 (He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016).

Architecture (paper section 4.2): a 3x3 conv stem with 16 filters, BN, ReLU; three stages of n
post-activation basic blocks with 16, 32 and 64 filters (times ``width``), the first block of stages 2 and
3 having stride 2; global average pooling and a linear classifier. No final BN (each block ends in ReLU).
Shortcuts where a block changes shape: ``"projection"`` (1x1 conv + BN, the default) or ``"zero_pad"``
(option A of the paper: subsample and append zero channels; resnet20 then has 269,722 parameters for 10
classes, 272,474 with projections).

Init (:mod:`ensemblekit.models.init`): Kaiming-normal fan_out convs, BN 1/0, PyTorch-default linear weight
with zero bias.
"""

from __future__ import annotations

import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.models.backbone import Backbone, build_residual_network
from ensemblekit.models.factory import LayerFactory, resolve_layers
from ensemblekit.models.registry import register_family, register_model
from ensemblekit.models.shortcuts import make_shortcut
from ensemblekit.models.spec import ResNetSpec, scale_channels

DEPTHS: tuple[int, ...] = (8, 14, 20, 32, 44, 56, 110)


class BasicBlock(nn.Module):
    """Post-activation basic block: ``relu(bn2(conv2(drop(relu(bn1(conv1(x)))))) + shortcut(x))``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels of both convs.
        stride: Stride of ``conv1`` and of the shortcut.
        kernel_size: Odd kernel of both convs.
        shortcut: ``"projection"`` or ``"zero_pad"`` (used only when the shape changes).
        dropout: Rate of ``dropout`` between the convs (``None`` when 0).
        bias: Whether convs have biases.
        layers: The layer factory.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        kernel_size: int,
        shortcut: str,
        dropout: float,
        bias: bool,
        layers: LayerFactory,
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = layers.conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=bias)
        self.bn1 = layers.batchnorm2d(out_channels)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.conv2 = layers.conv2d(out_channels, out_channels, kernel_size, padding=pad, bias=bias)
        self.bn2 = layers.batchnorm2d(out_channels)
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride, True, bias, layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, in, H, W]`` to ``[B, out, H / stride, W / stride]``."""
        out = self.relu(self.bn1(self.conv1(x)))
        if self.dropout is not None:
            out = self.dropout(out)
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + identity)


def resnet_spec(
    depth: int = 20,
    num_classes: int = 10,
    *,
    width: float = 1.0,
    shortcut: str = "projection",
    dropout: float = 0.0,
    in_channels: int = 3,
) -> ResNetSpec:
    """The spec of a CIFAR ResNet of depth 6n+2.

    Args:
        depth: 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...); n blocks per stage.
        num_classes: Classifier outputs.
        width: Channel multiplier for 16/32/64 (:func:`~ensemblekit.models.spec.scale_channels`).
        shortcut: ``"projection"`` or ``"zero_pad"``.
        dropout: Rate of the dropout between the two convs of every block.
        in_channels: Input image channels.

    Returns:
        The spec.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise UserError(f"CIFAR ResNet depth must be 6n+2 >= 8 (e.g. {', '.join(map(str, DEPTHS))}), got {depth!r}")
    channels = tuple(scale_channels(c, width) for c in (16, 32, 64))
    return ResNetSpec(
        family="resnet",
        block="basic",
        stem_channels=channels[0],
        stage_blocks=((depth - 2) // 6,) * 3,
        stage_channels=channels,
        stage_strides=(1, 2, 2),
        shortcut=shortcut,
        dropout=dropout,
        num_classes=num_classes,
        in_channels=in_channels,
    )


def build_resnet(spec: ResNetSpec, layers: LayerFactory | None = None) -> Backbone:
    """Build a post-activation ResNet (family ``"resnet"``) from its spec.

    Args:
        spec: The architecture.
        layers: The layer factory (default plain PyTorch layers).

    Returns:
        The initialised backbone; stage i is an ``nn.Sequential`` of :class:`BasicBlock`.
    """
    if spec.family != "resnet":
        raise UserError(f"build_resnet needs family 'resnet', got {spec.family!r}")
    layers = resolve_layers(layers)
    return build_residual_network(spec, BasicBlock, True, layers)


register_family("resnet", make_spec=resnet_spec, build=build_resnet)
register_model(
    "resnet",
    family="resnet",
    doc="CIFAR ResNet of any depth 6n+2 (He et al. 2016a): n post-activation basic blocks per stage, channels "
    "16/32/64 x width, no final BN.",
)
for _depth in DEPTHS:
    register_model(
        f"resnet{_depth}",
        family="resnet",
        depth=_depth,
        doc=f"CIFAR ResNet-{_depth} (He et al. 2016a): {(_depth - 2) // 6} post-activation basic blocks per stage, "
        "channels 16/32/64 x width, no final BN; shortcut 'projection' (1x1 conv + BN, default) or 'zero_pad' "
        "(option A).",
    )
