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
