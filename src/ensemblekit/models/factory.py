"""The layer factory through which every backbone creates its convolutions, BatchNorms and linears.

Methods that need a backbone made of their own layer types (BatchEnsemble rank-1 convs, template-mixture
convs, masked convs, per-member BatchNorm) subclass :class:`LayerFactory` and pass an instance as
``layers=`` to :func:`~ensemblekit.models.create_model` or :func:`~ensemblekit.models.build_model`.
The builders call only these three methods, so the factory sees every conv, BN and linear of the network.

Initialisation: after a backbone is built, :func:`~ensemblekit.models.init.init_weights` re-initialises
every module that *is an instance of* ``nn.Conv2d``, ``nn.BatchNorm2d`` or ``nn.Linear`` (subclasses
included). A factory that returns other module types initialises them itself.

Example:
    >>> class CountingFactory(LayerFactory):
    ...     def __init__(self):
    ...         self.convs = 0
    ...     def conv2d(self, *args, **kwargs):
    ...         self.convs += 1
    ...         return super().conv2d(*args, **kwargs)
"""

from __future__ import annotations

from torch import nn


class LayerFactory:
    """Creates plain PyTorch layers; subclass it to build backbones from other layer types."""

    def conv2d(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
    ) -> nn.Module:
        """A 2-d convolution mapping ``[B, in_channels, H, W]`` to ``[B, out_channels, H', W']``.

        Args:
            in_channels: Input channels.
            out_channels: Output channels (filters).
            kernel_size: Square kernel size.
            stride: Stride.
            padding: Zero padding on every side.
            bias: Whether the convolution has a bias.

        Returns:
            The convolution module (default ``nn.Conv2d``).
        """
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)

    def batchnorm2d(self, channels: int) -> nn.Module:
        """A BatchNorm over ``channels`` feature maps (default ``nn.BatchNorm2d``, eps 1e-5, momentum 0.1)."""
        return nn.BatchNorm2d(channels)

    def linear(self, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
        """A fully connected layer (default ``nn.Linear``)."""
        return nn.Linear(in_features, out_features, bias=bias)


def resolve_layers(layers: LayerFactory | None) -> LayerFactory:
    """Return ``layers`` or, when it is ``None``, the default plain-PyTorch factory."""
    return LayerFactory() if layers is None else layers
