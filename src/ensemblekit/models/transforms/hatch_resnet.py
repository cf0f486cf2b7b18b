"""Hatch a residual network (``resnet``, ``preact_resnet``, ``wide_resnet``) from a smaller one of its family.

MotherNets (Wasay et al., MLSys 2020) grows the trained MotherNet into each ensemble member by Net2Net
transformations (Chen et al., ICLR 2016):

* widening: one :class:`~.channel_map.ChannelMap` per *residual stream* (the stem output and the output of every
  block, shared by all blocks that keep the shape), used by every layer that writes into it (stem conv, block
  output convs ``conv2``, projection shortcuts, their BNs) and every layer that reads it (next ``conv1``,
  pre-activation ``bn1``, projections, final BN, classifier); one fresh map for each block's inner channels;
  with ``zero_pad`` shortcuts the stream map also keeps the zero channels aligned;
* deepening: member blocks beyond the MotherNet's count in a stage are appended at the end of the stage as
  zero-initialised residual blocks, so x + F(x) = x: post-activation blocks get ``bn2`` gamma = beta = 0
  (relu(0 + x) = x as x is already a ReLU output), pre-activation blocks a zero ``conv2``; exact in both BN modes;
* kernels: convs with a larger kernel receive the zero-padded MotherNet kernel.
"""

from __future__ import annotations

import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.models.shortcuts import ProjectionShortcut, ZeroPadShortcut
from ensemblekit.models.transforms.channel_map import ChannelMap
from ensemblekit.models.transforms.ops import transfer_bn, transfer_conv, transfer_linear


def zero_pad_stream_map(
    stream: ChannelMap, src: ZeroPadShortcut, dst: ZeroPadShortcut, gen: torch.Generator
) -> ChannelMap:
    """The output stream map of a block with a zero-pad shortcut.

    The identity path of target channel j is zero (padding) or input channel j - pad_front; it must equal the
    MotherNet's identity at g(j). So the middle channels map to pad_front_m + g_in(j - pad_front_t) and the target's
    padding channels map onto the MotherNet's padding channels (each used at least once).
    """
    pf_m, pb_m, pf_t, pb_t = src.pad_front, src.pad_back, dst.pad_front, dst.pad_back
    if pf_t < pf_m or pb_t < pb_m:
        raise UserError("a zero-pad shortcut of the member adds fewer zero channels than the MotherNet's")
    n = src.out_channels
    pads = torch.cat([torch.arange(pf_m), torch.arange(pf_m + src.in_channels, n)])
    front = torch.cat([torch.arange(pf_m), pads[torch.randint(0, max(1, len(pads)), (pf_t - pf_m,), generator=gen)]])
    back = torch.cat(
        [
            torch.arange(pf_m + src.in_channels, n),
            pads[torch.randint(0, max(1, len(pads)), (pb_t - pb_m,), generator=gen)],
        ]
    )
    middle = stream.index + pf_m
    return ChannelMap(torch.cat([front, middle, back]), n)


def _out_stream(src_block: nn.Module, dst_block: nn.Module, stream: ChannelMap, gen: torch.Generator) -> ChannelMap:
    s, d = src_block.shortcut, dst_block.shortcut
    if (s is None) != (d is None) or (s is not None and type(s) is not type(d)):
        raise UserError("the member and its MotherNet differ in where their residual blocks change shape")
    if s is None:
        return stream
    if isinstance(s, ZeroPadShortcut):
        return zero_pad_stream_map(stream, s, d, gen)
    return ChannelMap.random(s.conv.out_channels, d.conv.out_channels, gen)


def _hatch_block(src: nn.Module, dst: nn.Module, stream: ChannelMap, preact: bool, gen: torch.Generator) -> ChannelMap:
    out = _out_stream(src, dst, stream, gen)
    inner = ChannelMap.random(src.conv1.out_channels, dst.conv1.out_channels, gen)
    if preact:
        transfer_bn(src.bn1, dst.bn1, stream)
    transfer_conv(src.conv1, dst.conv1, stream, inner)
    transfer_bn(src.bn1 if not preact else src.bn2, dst.bn1 if not preact else dst.bn2, inner)
    transfer_conv(src.conv2, dst.conv2, inner, out)
    if not preact:
        transfer_bn(src.bn2, dst.bn2, out)
    if isinstance(src.shortcut, ProjectionShortcut):
        transfer_conv(src.shortcut.conv, dst.shortcut.conv, stream, out)
        if src.shortcut.bn is not None:
            transfer_bn(src.shortcut.bn, dst.shortcut.bn, out)
    return out


@torch.no_grad()
def _zero_residual(block: nn.Module, preact: bool) -> None:
    if block.shortcut is not None:
        raise UserError("a block added by deepening must keep its shape (identity shortcut)")
    if preact:
        block.conv2.weight.zero_()
        if block.conv2.bias is not None:
            block.conv2.bias.zero_()
    else:
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()


def hatch_resnet(mother: nn.Module, member: nn.Module, gen: torch.Generator) -> None:
    """Write the MotherNet's function into ``member`` (a wider/deeper net of the same family), in place.

    Args:
        mother: The trained MotherNet (a residual :class:`~ensemblekit.models.Backbone`).
        member: The member, built from a spec that is at least as large at every position.
        gen: Generator of the random widening maps.
    """
    ms, ts = mother.spec, member.spec
    preact = ms.block == "preact_basic"
    if ts.block != ms.block or ts.num_stages != ms.num_stages:
        raise UserError("a member must have the MotherNet's block type and number of stages")
    stream = ChannelMap.random(ms.stem_channels, ts.stem_channels, gen)
    transfer_conv(mother.stem.conv, member.stem.conv, ChannelMap.identity(ms.in_channels), stream)
    if mother.stem.bn is not None:
        transfer_bn(mother.stem.bn, member.stem.bn, stream)
    for src_stage, dst_stage in zip(mother.stages, member.stages):
        if len(dst_stage) < len(src_stage):
            raise UserError("a member cannot have fewer blocks in a stage than its MotherNet")
        for b, dst_block in enumerate(dst_stage):
            if b < len(src_stage):
                stream = _hatch_block(src_stage[b], dst_block, stream, preact, gen)
            else:
                _zero_residual(dst_block, preact)
    if mother.head.bn is not None:
        transfer_bn(mother.head.bn, member.head.bn, stream)
    transfer_linear(mother.head.fc, member.head.fc, stream)
