"""Noise corruptions (Hendrycks & Dietterich, 2019, CIFAR-10-C): per-pixel and per-channel random draws.

Parameters are those of the CIFAR-10-C generator ``make_cifar_c.py``; ``x`` is the image in ``[0, 1]``.
"""

from __future__ import annotations

import torch

from ensemblekit.data.corruptions._ops import to_float, to_uint8
from ensemblekit.data.corruptions.registry import CORRUPTIONS, param

GAUSSIAN = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT = (500.0, 250.0, 100.0, 75.0, 50.0)
IMPULSE = (0.01, 0.02, 0.03, 0.05, 0.07)
SPECKLE = (0.06, 0.10, 0.12, 0.16, 0.20)


def _normal(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=generator.device).to(x.device)


def _rand(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(x.shape, generator=generator, device=generator.device).to(x.device)


@CORRUPTIONS.register("gaussian_noise")
def gaussian_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """``clip(x + N(0, c^2))``, ``c = 0.04, 0.06, 0.08, 0.09, 0.10``."""
    x = to_float(images)
    return to_uint8(x + param(GAUSSIAN, severity) * _normal(x, generator))


@CORRUPTIONS.register("shot_noise")
def shot_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """``clip(Poisson(c x) / c)``, ``c = 500, 250, 100, 75, 50`` photons at full intensity."""
    c = param(SHOT, severity)
    rate = to_float(images).to(generator.device) * c
    return to_uint8(torch.poisson(rate, generator=generator).to(images.device) / c)


@CORRUPTIONS.register("impulse_noise")
def impulse_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Salt and pepper (scikit-image ``random_noise(mode="s&p")``).

    Each value is replaced with probability ``c = 0.01, 0.02, 0.03, 0.05, 0.07``, by 1 or 0 with equal odds.
    """
    x = to_float(images)
    flipped = _rand(x, generator) <= param(IMPULSE, severity)
    salted = _rand(x, generator) <= 0.5
    x = torch.where(flipped & salted, torch.ones_like(x), x)
    return to_uint8(torch.where(flipped & ~salted, torch.zeros_like(x), x))


@CORRUPTIONS.register("speckle_noise")
def speckle_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Multiplicative noise ``clip(x + x N(0, c^2))``, ``c = 0.06, 0.10, 0.12, 0.16, 0.20`` (a CIFAR-10-C extra)."""
    x = to_float(images)
    return to_uint8(x + x * param(SPECKLE, severity) * _normal(x, generator))
