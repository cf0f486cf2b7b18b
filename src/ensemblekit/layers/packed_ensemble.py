"""Packed-Ensembles layers (Laurent, Lafage, Tartaglione, Daniel, Martinez, Bursuc & Franchi, ICLR 2023).

A Packed-Ensemble runs M members of width c = α·C/M (C: the backbone's width, α: width multiplier) as one network
of width M·c whose layers are grouped so that the members never exchange information:

* the first layer (:class:`PackedConv2d` with ``first=True``) is an ordinary convolution from the shared input to
  M·c channels; member i owns output channels ``[i·c, (i+1)·c)``;
* every later convolution is grouped, ``groups = M·γ``: member i's output channels see only member i's input
  channels, each member's convolution being itself split into γ subgroups (γ = 1: a plain convolution per member);
* the classifier (:class:`PackedLinear`, the paper's ``last`` layer) maps member i's c features to its K logits,
  giving ``[B, M·K]`` that the ensemble reshapes to member logits ``[M, B, K]``;
* BatchNorm over the M·c channels, ReLU, pooling, dropout and residual additions act per channel, so they need
  no change (each member's BatchNorm is its slice of the channels).

Per layer, a convolution with kernel k costs M·(c_in·c_out/γ)·k² = (α²/(M·γ))·C_in·C_out·k² parameters and
multiply-adds per position: α = 2, M = 4, γ = 1 gives about one backbone's size and compute for four members.

Every member's weights are the rows ``[i·c_out, (i+1)·c_out)`` of the layer's weight (and bias, BatchNorm
statistics), so member i can be copied out as a stand-alone network (:func:`copy_member`) and the packed network
equals the M members run in a loop.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ensemblekit.models.factory import LayerFactory


def effective_subgroups(in_channels: int, out_channels: int, gamma: int, min_group_channels: int) -> int:
    """The subgroups γ' ≤ γ of one member's convolution ``in_channels -> out_channels``.

    The largest γ' ≤ γ that divides both channel counts and leaves at least ``min_group_channels`` input channels
    per subgroup (torch-uncertainty's ``minimum_channels_per_group``, 64 there), else 1.

    Args:
        in_channels: Input channels of one member.
        out_channels: Output channels of one member.
        gamma: The requested subgroups γ.
        min_group_channels: Smallest number of input channels of a subgroup.

    Returns:
        γ'.
    """
    for g in range(gamma, 1, -1):
        if in_channels % g == 0 and out_channels % g == 0 and in_channels // g >= min_group_channels:
            return g
    return 1


class PackedConv2d(nn.Conv2d):
    """M members' convolutions as one grouped convolution.

    Args:
        in_channels: Input channels of one member (of the image when ``first``).
        out_channels: Output channels of one member.
        kernel_size: Square kernel size.
        members: M.
        subgroups: γ' of this layer (1 when ``first``).
        first: Whether this is the network's first layer, which reads the shared input (groups 1).
        stride: Stride.
        padding: Zero padding.
        bias: Whether the convolution has a bias.

    Attributes:
        member_in: Input channels of one member.
        member_out: Output channels of one member.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        members: int,
        subgroups: int = 1,
        first: bool = False,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
    ) -> None:
        if first and subgroups != 1:
            raise ValueError("the first layer of a Packed-Ensemble has no subgroups")
        self.members, self.subgroups, self.first = members, subgroups, first
        self.member_in, self.member_out = in_channels, out_channels
        super().__init__(
            in_channels if first else members * in_channels,
            members * out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            bias=bias,
            groups=1 if first else members * subgroups,
        )

    def reset_parameters(self) -> None:
        """Initialise every member as the plain backbone's init does a convolution of the member's size.

        Kaiming-normal with ReLU gain over the fan-out of one member's subgroup: std = sqrt(2 / fan_out),
        fan_out = (c_out/γ')·k² (the backbones' rule, :mod:`ensemblekit.models.init`, at the member's width; a
        grouped ``nn.Conv2d`` would count all M·c_out outputs and start every member √M too small). Bias 0.
        """
        fan_out = self.member_out // self.subgroups * self.kernel_size[0] * self.kernel_size[1]
        with torch.no_grad():
            self.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
            if self.bias is not None:
                self.bias.zero_()

    def member_rows(self, i: int) -> slice:
        """Member ``i``'s output channels (rows of ``weight`` and ``bias``)."""
        return slice(i * self.member_out, (i + 1) * self.member_out)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, members={self.members}, subgroups={self.subgroups}, first={self.first}"


class PackedLinear(nn.Module):
    """The members' classifiers: member i maps its features ``x[:, i·c:(i+1)·c]`` to its K logits.

    ``y[b, i·K + k] = Σ_j W[i, k, j]·x[b, i·c + j] + bias[i, k]``, i.e. a linear layer grouped by member
    (the paper's ``last`` layer). Init as ``nn.Linear`` of the member's size: W ~ U(±1/√c), bias 0 (the backbones'
    ``default`` linear init).

    Args:
        in_features: Features of one member (c).
        out_features: Outputs of one member (K).
        members: M.
        bias: Whether there is a bias.
    """

    def __init__(self, in_features: int, out_features: int, members: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.members = in_features, out_features, members
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(members, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """W ~ U(−1/√c, 1/√c), bias 0."""
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, M·c] -> [B, M·K]`` (member-major)."""
        b = x.shape[0]
        out = torch.einsum("bmj,mkj->bmk", x.reshape(b, self.members, self.in_features), self.weight)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(b, self.members * self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, members={self.members}, bias={self.bias is not None}"


class PackedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the M·c channels of M members: member i's BatchNorm is channels ``[i·c, (i+1)·c)``.

    Args:
        channels: c, the channels of one member.
        members: M.
    """

    def __init__(self, channels: int, members: int) -> None:
        super().__init__(members * channels)
        self.member_channels, self.members = channels, members

    def member_rows(self, i: int) -> slice:
        """Member ``i``'s channels."""
        return slice(i * self.member_channels, (i + 1) * self.member_channels)


class PackedEnsembleLayers(LayerFactory):
    """Layer factory of a backbone built at one member's width: every layer becomes its packed M-member form.

    The first convolution the backbone asks for is its stem (the residual builders create it first): it becomes
    the ``first`` layer reading the shared image. Every other convolution is grouped by member (γ' = 1 here;
    :func:`ensemblekit.methods.packed.build_packed_network` gives the chosen convolutions their subgroups),
    BatchNorm runs over the M·c channels and the classifier is a :class:`PackedLinear`.

    Args:
        members: M.
    """

    def __init__(self, members: int) -> None:
        self.members = members
        self.stem: PackedConv2d | None = None

    def conv2d(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False) -> nn.Module:
        first = self.stem is None
        conv = PackedConv2d(in_channels, out_channels, kernel_size, self.members, 1, first, stride, padding, bias)
        if first:
            self.stem = conv
        return conv

    def batchnorm2d(self, channels: int) -> nn.Module:
        return PackedBatchNorm2d(channels, self.members)

    def linear(self, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
        return PackedLinear(in_features, out_features, self.members, bias)


def with_subgroups(conv: PackedConv2d, subgroups: int) -> PackedConv2d:
    """A freshly initialised copy of ``conv``'s layer with ``subgroups`` subgroups per member."""
    return PackedConv2d(
        conv.member_in,
        conv.member_out,
        conv.kernel_size[0],
        conv.members,
        subgroups,
        conv.first,
        conv.stride[0],
        conv.padding[0],
        conv.bias is not None,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)


def member_rows(module: nn.Module, i: int) -> slice | int | None:
    """Index of member ``i``'s entries in ``module``'s parameters and buffers along dim 0 (``None``: not packed)."""
    if isinstance(module, PackedConv2d | PackedBatchNorm2d):
        return module.member_rows(i)
    if isinstance(module, PackedLinear):
        return i
    return None


@torch.no_grad()
def copy_member(packed: nn.Module, i: int, target: nn.Module) -> nn.Module:
    """Copy member ``i`` of a packed network into ``target``, a network of one member's structure.

    ``target`` has the same module tree (a backbone built from the member spec, with plain or one-member packed
    layers); every parameter and buffer of ``target`` receives member i's rows of the packed one (BatchNorm
    running statistics and ``num_batches_tracked`` included). Returns ``target``.
    """
    targets = dict(target.named_modules())
    for name, module in packed.named_modules():
        rows = member_rows(module, i)
        if rows is None:
            continue
        dst = targets[name]
        for key, value in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            out = getattr(dst, key)
            out.copy_(value if key == "num_batches_tracked" else value[rows].reshape(out.shape))
    return target
