"""Member-aware layers that run an ensemble either member by member (loop) or packed on the channel axis.

All member-aware layers of one network share an :class:`ForwardState` that the ensemble sets around each
forward pass:

* **loop** (``state.member = i``): the network runs once per member on ``[B, C, H, W]`` activations and
  every layer uses member i's weights and BatchNorm slice.
* **packed** (``state.packed = True``): the network runs once on ``[B, M·C, H, W]`` activations, member i
  occupying channels ``[i·C, (i+1)·C)``. Convolutions are grouped (``groups = M``), the classifier is a
  grouped linear, and per-member BatchNorm is one BatchNorm over M·C channels. ReLU, pooling, dropout and
  residual additions act per channel and need no change; zero-padding shortcuts pad every member's block.

Both forms use the same parameters and buffers: member i's BatchNorm is the slice ``[i·C, (i+1)·C)`` of one
``BatchNorm2d(M·C)``, which the loop form normalises with ``F.batch_norm`` on contiguous slices (running
statistics are updated in place through the slice views), so outputs agree to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ensemblekit.models.shortcuts import ZeroPadShortcut


class ForwardState:
    """How the member-aware layers of one network run in the current forward pass (set by the ensemble's forward).

    Attributes:
        num_members: M.
        packed: Members stacked on channels.
        member: The member of the loop form (``None`` outside a loop pass).
        cache: Per-forward store of formed member weights (layer id -> tensor), so every template layer forms
            its M weights with one contraction per forward pass even when the loop form visits it M times.
    """

    def __init__(self, members: int) -> None:
        self.num_members = members
        self.packed = False
        self.member: int | None = None
        self.cache: dict[int, torch.Tensor] | None = None

    def current_member(self) -> int:
        """The loop form's member; raises when the layer is called outside the ensemble's forward."""
        if self.member is None:
            raise RuntimeError("a mixture layer ran outside its ensemble's forward (no member selected)")
        return self.member


class SharedConv2d(nn.Conv2d):
    """A plain convolution shared by all members (one weight; grouped with the weight repeated when packed).

    Args:
        state: The network's forward state.
        *args: ``nn.Conv2d`` arguments.
        **kwargs: ``nn.Conv2d`` keyword arguments.
    """

    def __init__(self, state: ForwardState, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_state", state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._state.packed:
            return super().forward(x)
        m = self._state.num_members
        bias = None if self.bias is None else self.bias.repeat(m)
        return F.conv2d(x, self.weight.repeat(m, 1, 1, 1), bias, self.stride, self.padding, self.dilation, m)


class SharedLinear(nn.Linear):
    """A plain linear layer shared by all members (applied to each member's block of features when packed)."""

    def __init__(self, state: ForwardState, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_state", state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._state.packed:
            return super().forward(x)
        b, m = x.shape[0], self._state.num_members
        return F.linear(x.reshape(b, m, -1), self.weight, self.bias).reshape(b, -1)


class MemberBatchNorm2d(nn.BatchNorm2d):
    """Per-member BatchNorm: one ``BatchNorm2d(M·C)`` whose slice ``[i·C, (i+1)·C)`` belongs to member i.

    Packed, it is an ordinary BatchNorm over ``[B, M·C, H, W]``. In the loop form member i is normalised
    with ``F.batch_norm`` on its slices of weight, bias and running statistics (updated in place);
    ``num_batches_tracked`` counts ensemble steps (incremented at member 0), as in the packed form.

    Args:
        channels: C, the channels of one member.
        members: M.
        state: The network's forward state.
    """

    def __init__(self, channels: int, members: int, state: ForwardState, **kwargs) -> None:
        super().__init__(channels * members, **kwargs)
        self.channels = channels
        self.members = members
        object.__setattr__(self, "_state", state)

    def member_slice(self, i: int) -> slice:
        """Channels of member ``i``."""
        return slice(i * self.channels, (i + 1) * self.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._state.packed:
            return super().forward(x)
        i = self._state.current_member()
        s = self.member_slice(i)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            if i == 0:
                self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean[s] if track and self.running_mean is not None else None,
            self.running_var[s] if track and self.running_var is not None else None,
            None if self.weight is None else self.weight[s],
            None if self.bias is None else self.bias[s],
            use_batch,
            factor,
            self.eps,
        )

    def extra_repr(self) -> str:
        return f"{self.channels} x {self.members} members, eps={self.eps}, momentum={self.momentum}"


class MemberZeroPadShortcut(ZeroPadShortcut):
    """Option-A shortcut that pads each member's channel block separately when packed."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, state: ForwardState) -> None:
        super().__init__(in_channels, out_channels, stride)
        object.__setattr__(self, "_state", state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._state.packed:
            return super().forward(x)
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        x = x.unflatten(1, (self._state.num_members, self.in_channels))
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back)).flatten(1, 2)


def replace_zero_pad_shortcuts(net: nn.Module, state: ForwardState) -> int:
    """Swap every :class:`ZeroPadShortcut` of ``net`` for a member-aware one; returns how many."""
    count = 0
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, ZeroPadShortcut) and not isinstance(child, MemberZeroPadShortcut):
                setattr(module, name, MemberZeroPadShortcut(child.in_channels, child.out_channels, child.stride, state))
                count += 1
    return count
