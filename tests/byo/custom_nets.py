"""Small custom modules (not ensemblekit backbones) for the bring-your-own-model tests."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU, global pool, linear classifier: a plain user network."""

    def __init__(self, num_classes: int = 10, channels: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def make_net(num_classes: int = 10, channels: int = 8) -> nn.Module:
    """The factory a config names as ``model.factory: "tests.byo.custom_nets:make_net"``."""
    return TinyCNN(num_classes, channels)


def make_loose(num_classes: int = 10, **kwargs) -> nn.Module:
    """A factory whose ``**kwargs`` would swallow anything (the issue's silent-mixture case)."""
    return TinyCNN(num_classes)


NOT_CALLABLE = 3


class _Exploding(TinyCNN):
    """A TinyCNN whose logits are scaled by 1e30: its training loss explodes at the first step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 1e30


_BUILT = [0]


def make_every_second_exploding(num_classes: int = 10) -> nn.Module:
    """Every second network this process builds explodes (members 1, 3, ... or 0, 2, ...: one parity).

    Member-parallel training gives stage j to rank j mod 2, so on 2 processes exactly one process gets the
    exploding members: the case where one rank fails and the other is healthy.
    """
    _BUILT[0] += 1
    return (_Exploding if _BUILT[0] % 2 == 0 else TinyCNN)(num_classes)
