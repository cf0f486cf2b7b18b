"""The structure every backbone shares: ``stem -> stages -> head``.

Every family builds a :class:`Backbone` with

* ``stem``: a :class:`ConvStem` (conv [-BN-ReLU]) or ``nn.Identity`` (VGG, whose first conv opens stage 0);
* ``stages``: an ``nn.ModuleList`` of ``nn.Sequential`` stages, each a sequence of named block modules;
* ``head``: a :class:`ClassifierHead` (optional BN-ReLU, global average pool, flatten, optional dropout,
  classifier ``head.fc``).

``forward(x) == head(forward_features(x))`` and ``forward_features(x) == stages(stem(x))``, so methods can
share the stem and early stages, duplicate later stages into paths (NFE, TreeNets), or swap the head.
The ``spec`` attribute describes the architecture; a method that changes the structure in place must
replace ``spec`` too, so that ``build_model(model.spec)`` stays an equivalent architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ensemblekit.models.factory import LayerFactory
from ensemblekit.models.spec import ModelSpec


class ConvStem(nn.Module):
    """The input layer: conv, optionally followed by BN-ReLU.

    Args:
        in_channels: Image channels.
        out_channels: Stem output channels.
        kernel_size: Odd kernel size (padding ``kernel_size // 2``, stride 1).
        norm: Whether BN-ReLU follows the conv (post-activation nets); pre-activation nets leave it to
            the first block.
        bias: Whether the conv has a bias.
        layers: The layer factory.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        norm: bool,
        bias: bool,
        layers: LayerFactory,
    ) -> None:
        super().__init__()
        self.conv = layers.conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.bn = layers.batchnorm2d(out_channels) if norm else None
        self.relu = nn.ReLU() if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, in, H, W]`` to ``[B, out, H, W]``."""
        x = self.conv(x)
        if self.bn is not None:
            x = self.relu(self.bn(x))
        return x


class ClassifierHead(nn.Module):
    """Optional BN-ReLU, global average pooling, flatten, optional dropout, linear classifier ``fc``.

    Args:
        in_features: Channels of the last stage.
        num_classes: Classifier outputs.
        final_bn: Whether BN-ReLU precedes pooling (pre-activation nets, DenseNet).
        dropout: Rate of the ``nn.Dropout`` before ``fc`` (0: ``dropout`` is ``None``).
        layers: The layer factory.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        final_bn: bool,
        dropout: float,
        layers: LayerFactory,
    ) -> None:
        super().__init__()
        self.bn = layers.batchnorm2d(in_features) if final_bn else None
        self.relu = nn.ReLU() if final_bn else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fc = layers.linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map features ``[B, C, H, W]`` to logits ``[B, num_classes]``."""
        if self.bn is not None:
            x = self.relu(self.bn(x))
        x = self.flatten(self.pool(x))
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x)


class Backbone(nn.Module):
    """An image classifier decomposed as ``head(stages(stem(x)))``.

    Args:
        spec: The architecture description this network was built from.
        stem: The input module.
        stages: The stages, each an ``nn.Sequential`` of blocks.
        head: The classifier head, with the linear classifier at ``head.fc``.
    """

    def __init__(self, spec: ModelSpec, stem: nn.Module, stages: Sequence[nn.Sequential], head: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and all stages: ``[B, in_channels, H, W]`` -> last-stage feature maps."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for images ``[B, in_channels, H, W]``."""
        return self.head(self.forward_features(x))

    def extra_repr(self) -> str:
        return f"family={self.spec.family!r}"


def build_residual_network(spec, block: type[nn.Module], stem_activation: bool, layers: LayerFactory) -> Backbone:
    """Stem, stages of residual blocks and head from a ``ResNetSpec`` (shared by ResNet, pre-act ResNet, WRN).

    Stage i holds ``spec.stage_blocks[i]`` blocks of ``block``; its first block has stride ``spec.stage_strides[i]``
    and changes the width to ``spec.stage_channels[i]``.

    Args:
        spec: A ``ResNetSpec``.
        block: The block class, called as ``block(in_ch, out_ch, stride, kernel_size, shortcut, dropout, conv_bias,
            layers)``.
        stem_activation: Whether the stem ends with BN-ReLU (post-activation nets) or is a bare conv.
        layers: The layer factory.

    Returns:
        The initialised backbone.
    """
    from ensemblekit.models.init import init_weights

    stem = ConvStem(
        spec.in_channels, spec.stem_channels, spec.stem_kernel_size, stem_activation, spec.conv_bias, layers
    )
    stages, in_ch = [], spec.stem_channels
    for blocks, out_ch, stride in zip(spec.stage_blocks, spec.stage_channels, spec.stage_strides):
        stage = []
        for i in range(blocks):
            s = stride if i == 0 else 1
            stage.append(block(in_ch, out_ch, s, spec.kernel_size, spec.shortcut, spec.dropout, spec.conv_bias, layers))
            in_ch = out_ch
        stages.append(nn.Sequential(*stage))
    head = ClassifierHead(in_ch, spec.num_classes, spec.final_bn, 0.0, layers)
    model = Backbone(spec, stem, stages, head)
    init_weights(model)
    return model
