"""Residual shortcuts for blocks that change shape (He et al., "Deep Residual Learning", CVPR 2016).

* Option A, :class:`ZeroPadShortcut`: parameter-free; subsample spatially by the stride and append zero
  channels (the CIFAR ResNets of the paper).
* Option B, :class:`ProjectionShortcut`: a 1x1 conv with the block's stride, followed by BN in
  post-activation blocks and without BN in pre-activation blocks (whose input is already normalised).

Blocks that keep their shape use the identity (``shortcut is None``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.models.factory import LayerFactory


class ZeroPadShortcut(nn.Module):
    """Option A: ``x[:, :, ::stride, ::stride]`` with zero channels added before and after.

    Args:
        in_channels: Input channels.
        out_channels: Output channels (>= ``in_channels``).
        stride: Spatial subsampling factor.

    Attributes:
        pad_front: Zero channels prepended, ``(out - in) // 2``.
        pad_back: Zero channels appended, ``out - in - pad_front``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise UserError(f"zero_pad shortcut cannot reduce channels ({in_channels} -> {out_channels})")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.pad_front = (out_channels - in_channels) // 2
        self.pad_back = out_channels - in_channels - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample and zero-pad ``[B, in, H, W]`` to ``[B, out, H / stride, W / stride]``."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class ProjectionShortcut(nn.Module):
    """Option B: 1x1 conv with stride, then BN if ``norm``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the 1x1 conv.
        norm: Whether BN follows the conv (``bn`` is ``None`` otherwise).
        bias: Whether the conv has a bias.
        layers: The layer factory.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm: bool, bias: bool, layers: LayerFactory
    ) -> None:
        super().__init__()
        self.conv = layers.conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)
        self.bn = layers.batchnorm2d(out_channels) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``[B, in, H, W]`` to ``[B, out, H / stride, W / stride]``."""
        x = self.conv(x)
        return x if self.bn is None else self.bn(x)


def make_shortcut(
    kind: str,
    in_channels: int,
    out_channels: int,
    stride: int,
    norm: bool,
    bias: bool,
    layers: LayerFactory,
) -> nn.Module | None:
    """The shortcut of a block: ``None`` (identity) when the shape is kept, else option A or B.

    Args:
        kind: ``"projection"`` or ``"zero_pad"``.
        in_channels: Block input channels.
        out_channels: Block output channels.
        stride: Block stride.
        norm: Whether a projection has BN.
        bias: Whether a projection conv has a bias.
        layers: The layer factory.

    Returns:
        ``None``, a :class:`ZeroPadShortcut` or a :class:`ProjectionShortcut`.
    """
    if stride == 1 and in_channels == out_channels:
        return None
    if kind == "zero_pad":
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return ProjectionShortcut(in_channels, out_channels, stride, norm, bias, layers)
