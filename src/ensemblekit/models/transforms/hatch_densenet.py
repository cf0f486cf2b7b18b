"""Hatch a DenseNet from a smaller one (MotherNets, Wasay et al., MLSys 2020; Net2Net, Chen et al. 2016).

A dense block's input is the concatenation of the stem (or transition) output and every earlier layer's new channels, so
its :class:`~.channel_map.ChannelMap` is the concatenation of one map per segment (:meth:`ChannelMap.cat`). Widening:
every segment (stem, each layer's growth channels, each transition output, each bottleneck) gets its own Net2Net map;
BNs on concatenated inputs copy statistics per channel. Deepening: member layers beyond the MotherNet's count in a block
are appended at its end; their growth channels are *new* channels (map index -1) that every later consumer (dense
layers, the transition, the head's classifier) reads with zero weight, so the function is unchanged whatever the new
layer computes (design choice, docs/methods/mothernets.md).
"""

from __future__ import annotations

import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.models.densenet import DenseLayer, Transition
from ensemblekit.models.transforms.channel_map import ChannelMap
from ensemblekit.models.transforms.ops import transfer_bn, transfer_conv, transfer_linear


def hatch_densenet(mother: nn.Module, member: nn.Module, gen: torch.Generator) -> None:
    """Write the MotherNet's function into ``member`` in place (same number of blocks and bottleneck setting)."""
    ms, ts = mother.spec, member.spec
    if (ts.num_stages, ts.bottleneck) != (ms.num_stages, ms.bottleneck):
        raise UserError("a DenseNet member must have the MotherNet's number of blocks and bottleneck setting")
    stem = ChannelMap.random(ms.stem_channels, ts.stem_channels, gen)
    transfer_conv(mother.stem.conv, member.stem.conv, ChannelMap.identity(ms.in_channels), stem)
    segments = [stem]
    for src_stage, dst_stage in zip(mother.stages, member.stages):
        src_layers = [m for m in src_stage if isinstance(m, DenseLayer)]
        dst_layers = [m for m in dst_stage if isinstance(m, DenseLayer)]
        if len(dst_layers) < len(src_layers):
            raise UserError("a DenseNet member cannot have fewer layers in a block than its MotherNet")
        for j, dst in enumerate(dst_layers):
            if j >= len(src_layers):
                segments.append(ChannelMap.new(dst.conv2.out_channels))
                continue
            src, inputs = src_layers[j], ChannelMap.cat(segments)
            if src.conv1 is not None:
                mid = ChannelMap.random(src.conv1.out_channels, dst.conv1.out_channels, gen)
                transfer_bn(src.bn1, dst.bn1, inputs)
                transfer_conv(src.conv1, dst.conv1, inputs, mid)
            else:
                mid = inputs
            growth = ChannelMap.random(src.conv2.out_channels, dst.conv2.out_channels, gen)
            transfer_bn(src.bn2, dst.bn2, mid)
            transfer_conv(src.conv2, dst.conv2, mid, growth)
            segments.append(growth)
        src_t = [m for m in src_stage if isinstance(m, Transition)]
        dst_t = [m for m in dst_stage if isinstance(m, Transition)]
        if src_t:
            inputs = ChannelMap.cat(segments)
            out = ChannelMap.random(src_t[0].conv.out_channels, dst_t[0].conv.out_channels, gen)
            transfer_bn(src_t[0].bn, dst_t[0].bn, inputs)
            transfer_conv(src_t[0].conv, dst_t[0].conv, inputs, out)
            segments = [out]
    inputs = ChannelMap.cat(segments)
    transfer_bn(mother.head.bn, member.head.bn, inputs)
    transfer_linear(mother.head.fc, member.head.fc, inputs)
