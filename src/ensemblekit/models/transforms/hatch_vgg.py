"""Hatch a VGG-style plain network from a smaller one (MotherNets, Wasay et al., MLSys 2020; Net2Net).

Stage by stage (a stage is the conv layers between two poolings), the member's j-th conv layer receives the
MotherNet's j-th layer, widened by a fresh :class:`~.channel_map.ChannelMap` (and kernel-enlarged when the
member's kernel is larger). Member layers beyond the MotherNet's count are appended before the pooling as
Net2DeeperNet identity layers: an identity conv (mapped through the channel maps, so it may also be wider)
and an eval-mode identity BN (running mean mu, variance sigma^2, gamma = sqrt(sigma^2 + eps), beta = mu;
by default mu = 0, sigma^2 = 1). The input of such a layer is a ReLU output, so relu(identity(x)) = x.
"""

from __future__ import annotations

import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.models.transforms.channel_map import ChannelMap
from ensemblekit.models.transforms.ops import identity_bn_, identity_conv_, transfer_bn, transfer_conv, transfer_linear
from ensemblekit.models.vgg import ConvBNReLU


def _conv_layers(stage: nn.Sequential) -> list[ConvBNReLU]:
    return [m for m in stage if isinstance(m, ConvBNReLU)]


def hatch_vgg(mother: nn.Module, member: nn.Module, gen: torch.Generator) -> list[nn.BatchNorm2d]:
    """Write the MotherNet's function into ``member`` in place.

    Args:
        mother: The trained MotherNet (family ``vgg``).
        member: The member, at least as wide, deep and large-kerneled at every aligned position.
        gen: Generator of the random widening maps.

    Returns:
        The BNs of the identity layers added by deepening (their statistics may be refined from data).
    """
    if member.spec.num_stages != mother.spec.num_stages or member.spec.batch_norm != mother.spec.batch_norm:
        raise UserError("a VGG member must have the MotherNet's number of stages and BN setting")
    prev = ChannelMap.identity(mother.spec.in_channels)
    added = []
    for src_stage, dst_stage in zip(mother.stages, member.stages):
        src_layers, dst_layers = _conv_layers(src_stage), _conv_layers(dst_stage)
        if len(dst_layers) < len(src_layers):
            raise UserError("a VGG member cannot have fewer conv layers in a stage than its MotherNet")
        for j, dst in enumerate(dst_layers):
            if j < len(src_layers):
                src = src_layers[j]
                out = ChannelMap.random(src.conv.out_channels, dst.conv.out_channels, gen)
                transfer_conv(src.conv, dst.conv, prev, out)
                if src.bn is not None:
                    transfer_bn(src.bn, dst.bn, out)
            else:
                out = ChannelMap.random(prev.source_size, dst.conv.out_channels, gen)
                identity_conv_(dst.conv, prev, out)
                if dst.bn is not None:
                    identity_bn_(dst.bn)
                    added.append(dst.bn)
            prev = out
    transfer_linear(mother.head.fc, member.head.fc, prev)
    return added
