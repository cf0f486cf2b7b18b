"""VGG with BatchNorm for CIFAR (Simonyan & Zisserman, "Very Deep Convolutional Networks...", ICLR 2015).

Paper: "Very Deep Convolutional Networks for Large-Scale Image Recognition"; BN after every conv follows
Ioffe & Szegedy (2015).

Configurations A/B/D/E give ``vgg11``/``vgg13``/``vgg16``/``vgg19``: five stages of 3x3 conv-BN-ReLU layers
(64, 128, 256, 512, 512 filters times ``width``), each stage ending in 2x2 max-pooling, so a 32x32 input
ends at 1x1. The common CIFAR variant (kuangliu/pytorch-cifar) then has a single linear layer
``512 -> num_classes`` instead of the three ImageNet FC layers; the head pools globally (a no-op on 1x1
maps, and it keeps other input sizes working). Convs keep their biases by default, which that variant's
parameter count includes (vgg16: 14,728,266 for 10 classes; ``conv_bias=False``: 14,724,042).

There is no stem (``nn.Identity``): stage i holds the convs between two poolings, then the pooling, then
(with ``dropout`` > 0 and i < last) an ``nn.Dropout``; the head has one more dropout before the classifier.

Init (:mod:`ensemblekit.models.init`): Kaiming-normal fan_out convs, BN 1/0, classifier N(0, 0.01^2) with
zero bias (as torchvision's VGG).
"""

from __future__ import annotations

import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.models.backbone import Backbone, ClassifierHead
from ensemblekit.models.factory import LayerFactory, resolve_layers
from ensemblekit.models.init import init_weights
from ensemblekit.models.registry import register_family, register_model
from ensemblekit.models.spec import VGGSpec, scale_channels

CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
CONFIG_LETTERS: dict[int, str] = {11: "A", 13: "B", 16: "D", 19: "E"}


class ConvBNReLU(nn.Module):
    """One VGG layer: ``relu(bn(conv(x)))`` (``bn`` is ``None`` without BatchNorm).

    Args:
        in_channels: Input channels.
        out_channels: Filters.
        kernel_size: Odd kernel (padding ``kernel_size // 2``, stride 1).
        batch_norm: Whether BN follows the conv.
        bias: Whether the conv has a bias.
        layers: The layer factory.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, batch_norm: bool, bias: bool, layers: LayerFactory
    ) -> None:
        super().__init__()
        self.conv = layers.conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.bn = layers.batchnorm2d(out_channels) if batch_norm else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, in, H, W]`` to ``[B, out, H, W]``."""
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.relu(x)


def vgg_spec(
    depth: int = 16,
    num_classes: int = 10,
    *,
    width: float = 1.0,
    dropout: float = 0.0,
    batch_norm: bool = True,
    conv_bias: bool = True,
    in_channels: int = 3,
) -> VGGSpec:
    """The spec of VGG-11/13/16/19 for CIFAR.

    Args:
        depth: 11, 13, 16 or 19 (configurations A, B, D, E).
        num_classes: Classifier outputs.
        width: Multiplier of every conv's filters (rounded half up, at least 1).
        dropout: Rate of the dropout after stages 1..4 and before the classifier.
        batch_norm: Whether BN follows every conv.
        conv_bias: Whether convs have biases (True in the common CIFAR variant).
        in_channels: Input image channels.

    Returns:
        The spec.
    """
    if depth not in CONFIGS:
        raise UserError(f"VGG depth must be one of {sorted(CONFIGS)}, got {depth!r}")
    channels = tuple(tuple(scale_channels(c, width) for c in stage) for stage in CONFIGS[depth])
    return VGGSpec(
        conv_channels=channels,
        batch_norm=batch_norm,
        conv_bias=conv_bias,
        dropout=dropout,
        num_classes=num_classes,
        in_channels=in_channels,
    )


def build_vgg(spec: VGGSpec, layers: LayerFactory | None = None) -> Backbone:
    """Build a VGG from its spec.

    Args:
        spec: The architecture.
        layers: The layer factory (default plain PyTorch layers).

    Returns:
        The initialised backbone: ``stem`` is ``nn.Identity``; stage i is ``nn.Sequential`` of
        :class:`ConvBNReLU` layers, ``nn.MaxPool2d(2)`` and, with dropout and i < last, ``nn.Dropout``.
    """
    if spec.family != "vgg":
        raise UserError(f"build_vgg needs family 'vgg', got {spec.family!r}")
    layers = resolve_layers(layers)
    stages, in_ch = [], spec.in_channels
    for i, (channels, kernels) in enumerate(zip(spec.conv_channels, spec.kernel_sizes)):
        modules: list[nn.Module] = []
        for out_ch, k in zip(channels, kernels):
            modules.append(ConvBNReLU(in_ch, out_ch, k, spec.batch_norm, spec.conv_bias, layers))
            in_ch = out_ch
        modules.append(nn.MaxPool2d(2))
        if spec.dropout > 0 and i < spec.num_stages - 1:
            modules.append(nn.Dropout(spec.dropout))
        stages.append(nn.Sequential(*modules))
    head = ClassifierHead(in_ch, spec.num_classes, False, spec.dropout, layers)
    model = Backbone(spec, nn.Identity(), stages, head)
    init_weights(model, linear="normal")
    return model


register_family("vgg", make_spec=vgg_spec, build=build_vgg)
register_model(
    "vgg",
    family="vgg",
    doc="CIFAR VGG-11/13/16/19 with BN (Simonyan & Zisserman 2015; one linear classifier on the pooled 512 features).",
)
for _depth, _stages in CONFIGS.items():
    register_model(
        f"vgg{_depth}",
        family="vgg",
        depth=_depth,
        doc=f"CIFAR VGG-{_depth} with BN (Simonyan & Zisserman 2015, configuration {CONFIG_LETTERS[_depth]}): "
        f"{'/'.join(str(len(stage)) for stage in _stages)} conv-BN-ReLU layers per stage, max-pool after each "
        "stage, biased convs, one linear classifier on the pooled features.",
    )
