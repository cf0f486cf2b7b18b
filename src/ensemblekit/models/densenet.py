"""DenseNets for CIFAR (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017).

Architecture: a 3x3 conv stem (2k filters for bottleneck nets, 16 otherwise), three dense blocks on 32x32,
16x16 and 8x8 maps joined by transitions (BN-ReLU-conv1x1 to ``floor(compression * C)`` channels, 2x2
average pooling), final BN-ReLU, global average pooling and a linear classifier. A dense layer is
BN-ReLU-conv3x3 producing k = growth rate channels, preceded in bottleneck ("B") nets by BN-ReLU-conv1x1 to
4k channels; its output is concatenated to its input. DenseNet-BC (bottleneck + compression 0.5) of depth L
has (L - 4) / 6 layers per block, the original DenseNet (L - 4) / 3.

Registered: ``densenet_bc100_12`` (769,162 parameters for 10 classes), ``densenet_bc40_12`` (176,122),
``densenet40_12`` (original, no bottleneck/compression: 1,019,722), and ``densenet`` (any depth/k).
Dropout, when on, follows every conv of dense layers and transitions, as in the paper's runs without
augmentation. ``width`` multiplies the growth rate and the stem (rounded half up, at least 1).

Init (:mod:`ensemblekit.models.init`): Kaiming-normal fan_out convs, BN 1/0, PyTorch-default linear weight
with zero bias.
"""

from __future__ import annotations

import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.models.backbone import Backbone, ClassifierHead, ConvStem
from ensemblekit.models.factory import LayerFactory, resolve_layers
from ensemblekit.models.init import init_weights
from ensemblekit.models.registry import register_family, register_model
from ensemblekit.models.spec import DenseNetSpec, scale_channels


class DenseLayer(nn.Module):
    """``cat([x, conv2(relu(bn2(h)))])`` with ``h = conv1(relu(bn1(x)))`` (bottleneck) or ``h = x``.

    Without bottleneck ``bn1`` and ``conv1`` are ``None``. ``dropout`` (``None`` when 0) follows each conv.

    Args:
        in_channels: Input channels.
        growth_rate: Channels added (``conv2``'s filters).
        bottleneck: Whether the 1x1 bottleneck conv is present.
        bottleneck_width: Bottleneck channels = ``bottleneck_width * growth_rate``.
        dropout: Dropout rate.
        layers: The layer factory.
    """

    def __init__(
        self,
        in_channels: int,
        growth_rate: int,
        bottleneck: bool,
        bottleneck_width: int,
        dropout: float,
        layers: LayerFactory,
    ) -> None:
        super().__init__()
        mid = bottleneck_width * growth_rate if bottleneck else in_channels
        self.bn1 = layers.batchnorm2d(in_channels) if bottleneck else None
        self.conv1 = layers.conv2d(in_channels, mid, 1) if bottleneck else None
        self.bn2 = layers.batchnorm2d(mid)
        self.conv2 = layers.conv2d(mid, growth_rate, 3, padding=1)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.dropout is None else self.dropout(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C, H, W]`` to ``[B, C + growth_rate, H, W]``."""
        out = x
        if self.conv1 is not None:
            out = self._drop(self.conv1(self.relu(self.bn1(x))))
        out = self._drop(self.conv2(self.relu(self.bn2(out))))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    """``pool(drop(conv(relu(bn(x)))))``: 1x1 conv to ``out_channels``, 2x2 average pooling.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        dropout: Dropout rate (``dropout`` is ``None`` when 0).
        layers: The layer factory.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float, layers: LayerFactory) -> None:
        super().__init__()
        self.bn = layers.batchnorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = layers.conv2d(in_channels, out_channels, 1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, in, H, W]`` to ``[B, out, H / 2, W / 2]``."""
        x = self.conv(self.relu(self.bn(x)))
        if self.dropout is not None:
            x = self.dropout(x)
        return self.pool(x)


def densenet_spec(
    depth: int = 100,
    growth_rate: int = 12,
    num_classes: int = 10,
    *,
    bottleneck: bool = True,
    compression: float = 0.5,
    width: float = 1.0,
    dropout: float = 0.0,
    in_channels: int = 3,
) -> DenseNetSpec:
    """The spec of a 3-block CIFAR DenseNet.

    Args:
        depth: L = 6n + 4 with bottleneck, 3n + 4 without (n layers per dense block).
        growth_rate: k.
        num_classes: Classifier outputs.
        bottleneck: Whether dense layers have the 1x1 bottleneck.
        compression: Transition channel factor (1.0: no compression).
        width: Multiplier of the growth rate and the stem (rounded half up, at least 1).
        dropout: Rate of the dropout after every conv of dense layers and transitions.
        in_channels: Input image channels.

    Returns:
        The spec.
    """
    per_layer = 6 if bottleneck else 3
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 4 + per_layer or (depth - 4) % per_layer:
        raise UserError(f"DenseNet depth must be {per_layer}n+4 >= {4 + per_layer}, got {depth!r}")
    if isinstance(growth_rate, bool) or not isinstance(growth_rate, int) or growth_rate < 1:
        raise UserError(f"DenseNet growth_rate must be an integer >= 1, got {growth_rate!r}")
    growth = scale_channels(growth_rate, width)
    return DenseNetSpec(
        growth_rate=growth,
        stage_layers=((depth - 4) // per_layer,) * 3,
        stem_channels=2 * growth if bottleneck else scale_channels(16, width),
        bottleneck=bottleneck,
        compression=compression,
        dropout=dropout,
        num_classes=num_classes,
        in_channels=in_channels,
    )


def build_densenet(spec: DenseNetSpec, layers: LayerFactory | None = None) -> Backbone:
    """Build a DenseNet from its spec.

    Args:
        spec: The architecture.
        layers: The layer factory (default plain PyTorch layers).

    Returns:
        The initialised backbone: the stem is a bare conv; stage i is ``nn.Sequential`` of
        :class:`DenseLayer` followed (except in the last stage) by a :class:`Transition`; the head has
        BN-ReLU.
    """
    if spec.family != "densenet":
        raise UserError(f"build_densenet needs family 'densenet', got {spec.family!r}")
    layers = resolve_layers(layers)
    stem = ConvStem(spec.in_channels, spec.stem_channels, 3, False, False, layers)
    stages, channels = [], spec.stem_channels
    for i, n in enumerate(spec.stage_layers):
        modules: list[nn.Module] = []
        for _ in range(n):
            modules.append(
                DenseLayer(channels, spec.growth_rate, spec.bottleneck, spec.bottleneck_width, spec.dropout, layers)
            )
            channels += spec.growth_rate
        if i < spec.num_stages - 1:
            out = spec.transition_channels(channels)
            modules.append(Transition(channels, out, spec.dropout, layers))
            channels = out
        stages.append(nn.Sequential(*modules))
    head = ClassifierHead(channels, spec.num_classes, True, 0.0, layers)
    model = Backbone(spec, stem, stages, head)
    init_weights(model)
    return model


register_family("densenet", make_spec=densenet_spec, build=build_densenet)
register_model(
    "densenet",
    family="densenet",
    doc="CIFAR DenseNet of any depth/growth rate (Huang et al. 2017; default DenseNet-BC-100, k = 12).",
)
register_model(
    "densenet_bc100_12",
    family="densenet",
    depth=100,
    growth_rate=12,
    bottleneck=True,
    compression=0.5,
    doc="DenseNet-BC-100, k = 12 (Huang et al. 2017): 3 blocks of 16 bottleneck layers, compression 0.5, "
    "stem 24 channels, final BN-ReLU; 769,162 parameters for 10 classes.",
)
register_model(
    "densenet_bc40_12",
    family="densenet",
    depth=40,
    growth_rate=12,
    bottleneck=True,
    compression=0.5,
    doc="DenseNet-BC-40, k = 12 (small variant for quick runs): 3 blocks of 6 bottleneck layers, "
    "compression 0.5, stem 24 channels, final BN-ReLU; 176,122 parameters for 10 classes.",
)
register_model(
    "densenet40_12",
    family="densenet",
    depth=40,
    growth_rate=12,
    bottleneck=False,
    compression=1.0,
    doc="DenseNet-40, k = 12 (Huang et al. 2017, original): 3 blocks of 12 layers without bottleneck or "
    "compression, stem 16 channels, final BN-ReLU; 1,019,722 parameters for 10 classes.",
)
