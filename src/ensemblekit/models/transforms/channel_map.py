"""Channel maps: which source (MotherNet) channel every target (hatched) channel copies.

Net2WiderNet (Chen, Goodfellow & Shlens, "Net2Net: Accelerating Learning via Knowledge Transfer", ICLR 2016)
widens a layer from n to q >= n units with a map g: {0..q-1} -> {0..n-1}, g(j) = j for j < n and g(j) drawn
uniformly from {0..n-1} for j >= n. With cnt(i) = |{j : g(j) = i}|, the widened layer copies unit g(j) and every
layer reading it divides its incoming weight by cnt(g(j)), so the sum over the replicas equals the original.

A :class:`ChannelMap` stores g as ``index`` (one entry per target channel). ``index == -1`` marks a *new*
channel with no source (a DenseNet layer added by deepening): every consumer gives it zero weight. Maps of
concatenated feature maps (DenseNet inputs) are concatenated with :meth:`ChannelMap.cat`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ensemblekit.errors import UserError


@dataclass(frozen=True)
class ChannelMap:
    """Target channel j copies source channel ``index[j]`` (``-1``: a new channel, zero-weighted downstream).

    Attributes:
        index: ``[q]`` int64 source channel of every target channel.
        source_size: n, the number of source channels (every one is used at least once).
    """

    index: torch.Tensor
    source_size: int

    def __post_init__(self) -> None:
        used = self.index[self.index >= 0]
        if used.numel() and int(used.max()) >= self.source_size:
            raise ValueError(f"channel map refers to source channel {int(used.max())} of {self.source_size}")
        if self.source_size and torch.bincount(used, minlength=self.source_size).min() == 0:
            raise ValueError("a channel map must use every source channel (function preservation)")

    @property
    def target_size(self) -> int:
        """q, the number of target channels."""
        return int(self.index.numel())

    @property
    def counts(self) -> torch.Tensor:
        """cnt(i): how many target channels copy source channel i, ``[n]``."""
        return torch.bincount(self.index[self.index >= 0], minlength=self.source_size)

    @property
    def divisor(self) -> torch.Tensor:
        """cnt(g(j)) for every target channel (1 for new channels), ``[q]`` float64."""
        counts = self.counts.double()
        out = torch.ones(self.target_size, dtype=torch.float64)
        known = self.index >= 0
        out[known] = counts[self.index[known]]
        return out

    @property
    def is_new(self) -> torch.Tensor:
        """Boolean mask of new (source-less) target channels."""
        return self.index < 0

    @staticmethod
    def identity(n: int) -> ChannelMap:
        """g(j) = j: the channels are kept as they are."""
        return ChannelMap(torch.arange(n), n)

    @staticmethod
    def random(n: int, q: int, generator: torch.Generator) -> ChannelMap:
        """Net2WiderNet's map from n to q >= n channels: identity on the first n, uniform draws for the rest."""
        if q < n:
            raise UserError(f"cannot widen {n} channels to {q}: a hatched layer must be at least as wide")
        extra = torch.randint(0, n, (q - n,), generator=generator) if q > n else torch.empty(0, dtype=torch.int64)
        return ChannelMap(torch.cat([torch.arange(n), extra]), n)

    @staticmethod
    def new(q: int) -> ChannelMap:
        """Make q new channels with no source (consumers give them zero weight)."""
        return ChannelMap(torch.full((q,), -1, dtype=torch.int64), 0)

    @staticmethod
    def cat(maps: Sequence[ChannelMap]) -> ChannelMap:
        """The map of a channel-wise concatenation (source indices offset by the earlier sources' sizes)."""
        parts, offset = [], 0
        for m in maps:
            parts.append(torch.where(m.index >= 0, m.index + offset, m.index))
            offset += m.source_size
        return ChannelMap(torch.cat(parts), offset)
