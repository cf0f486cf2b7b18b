"""Pre-activation ResNets for CIFAR (He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016).

``resnet18``: a 3x3 conv stem with 64 filters (no BN/ReLU: the first block pre-activates), four stages of
[2, 2, 2, 2] pre-activation basic blocks with 64/128/256/512 filters and strides 1/2/2/2, global average
pooling, linear classifier. Where a block changes shape its shortcut is a 1x1 conv (no BN) applied to the
pre-activated input, as in the common CIFAR implementation (kuangliu/pytorch-cifar).

``final_bn=True`` (the default here, as in the paper's full pre-activation design and in WideResNets)
adds BN-ReLU before pooling: 11,172,170 parameters for 10 classes; ``final_bn=False`` is the kuangliu
PreActResNet18 (11,171,146). The block and builder here also build WideResNets
(:mod:`ensemblekit.models.wide_resnet`).

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
from ensemblekit.models.shortcuts import ZeroPadShortcut, make_shortcut
from ensemblekit.models.spec import ResNetSpec, scale_channels

STAGE_BLOCKS: dict[int, tuple[int, ...]] = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class PreActBlock(nn.Module):
    """Pre-activation basic block: ``conv2(drop(relu(bn2(conv1(relu(bn1(x))))))) + shortcut``.

    A projection shortcut reads the pre-activated input ``relu(bn1(x))``; a zero-pad shortcut and the
    identity read ``x``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels of both convs.
        stride: Stride of ``conv1`` and of the shortcut.
        kernel_size: Odd kernel of both convs.
        shortcut: ``"projection"`` (1x1 conv, no BN) or ``"zero_pad"`` (used only when the shape changes).
        dropout: Rate of ``dropout`` between the convs (``None`` when 0), as in WRN.
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
        self.bn1 = layers.batchnorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv1 = layers.conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=bias)
        self.bn2 = layers.batchnorm2d(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.conv2 = layers.conv2d(out_channels, out_channels, kernel_size, padding=pad, bias=bias)
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride, False, bias, layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, in, H, W]`` to ``[B, out, H / stride, W / stride]``."""
        out = self.relu(self.bn1(x))
        if self.shortcut is None:
            identity = x
        elif isinstance(self.shortcut, ZeroPadShortcut):
            identity = self.shortcut(x)
        else:
            identity = self.shortcut(out)
        out = self.conv1(out)
        out = self.relu(self.bn2(out))
        if self.dropout is not None:
            out = self.dropout(out)
        return self.conv2(out) + identity


def build_preact_network(spec: ResNetSpec, layers: LayerFactory | None = None) -> Backbone:
    """Build a pre-activation residual network (families ``"preact_resnet"`` and ``"wide_resnet"``).

    Args:
        spec: The architecture (block ``"preact_basic"``).
        layers: The layer factory (default plain PyTorch layers).

    Returns:
        The initialised backbone; the stem is a bare conv, stage i an ``nn.Sequential`` of
        :class:`PreActBlock`, the head has BN-ReLU iff ``spec.final_bn``.
    """
    if spec.block != "preact_basic":
        raise UserError(f"a pre-activation network needs block 'preact_basic', got {spec.block!r}")
    layers = resolve_layers(layers)
    return build_residual_network(spec, PreActBlock, False, layers)


def build_preact_resnet(spec: ResNetSpec, layers: LayerFactory | None = None) -> Backbone:
    """Build a family ``"preact_resnet"`` spec (see :func:`build_preact_network`)."""
    if spec.family != "preact_resnet":
        raise UserError(f"build_preact_resnet needs family 'preact_resnet', got {spec.family!r}")
    return build_preact_network(spec, layers)


def preact_resnet_spec(
    depth: int = 18,
    num_classes: int = 10,
    *,
    width: float = 1.0,
    final_bn: bool = True,
    shortcut: str = "projection",
    dropout: float = 0.0,
    in_channels: int = 3,
) -> ResNetSpec:
    """The spec of a CIFAR pre-activation ResNet-18 or -34 (64/128/256/512 channels x width).

    Args:
        depth: 18 ([2, 2, 2, 2] blocks) or 34 ([3, 4, 6, 3]).
        num_classes: Classifier outputs.
        width: Channel multiplier (:func:`~ensemblekit.models.spec.scale_channels`).
        final_bn: Whether the head applies BN-ReLU before pooling (False gives kuangliu's PreActResNet18).
        shortcut: ``"projection"`` (1x1 conv) or ``"zero_pad"``.
        dropout: Rate of the dropout between the two convs of every block.
        in_channels: Input image channels.

    Returns:
        The spec.
    """
    if depth not in STAGE_BLOCKS:
        raise UserError(f"pre-activation ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth!r}")
    channels = tuple(scale_channels(c, width) for c in (64, 128, 256, 512))
    return ResNetSpec(
        family="preact_resnet",
        block="preact_basic",
        stem_channels=channels[0],
        stage_blocks=STAGE_BLOCKS[depth],
        stage_channels=channels,
        stage_strides=(1, 2, 2, 2),
        shortcut=shortcut,
        final_bn=final_bn,
        dropout=dropout,
        num_classes=num_classes,
        in_channels=in_channels,
    )


register_family("preact_resnet", make_spec=preact_resnet_spec, build=build_preact_resnet)
register_model(
    "preact_resnet",
    family="preact_resnet",
    doc="CIFAR pre-activation ResNet-18/34 (He et al. 2016b; 3x3 stem, 1x1-conv projection shortcuts).",
)
register_model(
    "resnet18",
    family="preact_resnet",
    depth=18,
    doc="CIFAR pre-activation ResNet-18 (He et al. 2016b): 3x3 stem, [2, 2, 2, 2] blocks, 64-512 channels. "
    "Projection shortcuts are 1x1 convs on the pre-activated input; final_bn=True (default, 11,172,170 parameters "
    "for 10 classes) adds BN-ReLU before pooling, final_bn=False is kuangliu's PreActResNet18 (11,171,146).",
)
