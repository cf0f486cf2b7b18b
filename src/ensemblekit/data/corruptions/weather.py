"""Weather corruptions (Hendrycks & Dietterich, 2019, CIFAR-10-C): fog from a batched plasma fractal.

Frost, snow and spatter are not implemented: frost needs the generator's frost photographs, snow and
spatter ImageMagick's motion blur of a noise layer and OpenCV's distance transform (see ``docs/robustness.md``).
"""

from __future__ import annotations

import torch

from ensemblekit.data.corruptions._ops import to_float, to_uint8, uniform
from ensemblekit.data.corruptions.registry import CORRUPTIONS, param

FOG = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))  # strength, wibble decay


def plasma_fractal(batch: int, mapsize: int, decay: float, generator: torch.Generator) -> torch.Tensor:
    """``[batch, mapsize, mapsize]`` diamond-square height maps in ``[0, 1]`` (one per image).

    As the generator's ``plasma_fractal``: corners start at 0; at each scale the square step sets centres
    to the mean of their 4 corners plus ``wibble * U(-wibble, wibble)`` (wrapping around the edges), the
    diamond step does the same for edge midpoints; ``wibble`` starts at 100 and is divided by ``decay`` per
    halving of the step. Each map is finally shifted and scaled to ``[0, 1]``.
    """
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    m = torch.zeros(batch, mapsize, mapsize, dtype=torch.float64)
    step, wibble = mapsize, 100.0

    def wibbled(a: torch.Tensor) -> torch.Tensor:
        return a / 4 + wibble * uniform(tuple(a.shape), -wibble, wibble, generator).double().cpu()

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        squares = corners + torch.roll(corners, -1, dims=1)
        squares = squares + torch.roll(squares, -1, dims=2)
        m[:, half::step, half::step] = wibbled(squares)
        centres = m[:, half::step, half::step]
        corners = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled(
            centres + torch.roll(centres, 1, dims=1) + corners + torch.roll(corners, -1, dims=2)
        )
        m[:, half::step, 0::step] = wibbled(
            centres + torch.roll(centres, 1, dims=2) + corners + torch.roll(corners, -1, dims=1)
        )
        step //= 2
        wibble /= decay
    flat = m.reshape(batch, -1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    flat = flat / flat.max(dim=1, keepdim=True).values
    return flat.reshape(batch, mapsize, mapsize)


@CORRUPTIONS.register("fog")
def fog(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """``clip((x + c F) * max(x) / (max(x) + c))`` with a plasma fractal ``F`` shared by the channels."""
    strength, decay = param(FOG, severity)
    x = to_float(images)
    b, _, h, w = x.shape
    size = 1 << max(h, w, 2).__sub__(1).bit_length()
    frac = plasma_fractal(b, size, decay, generator)[:, :h, :w].to(x)
    peak = x.reshape(b, -1).max(dim=1).values.view(b, 1, 1, 1)
    x = x + strength * frac.unsqueeze(1)
    return to_uint8(x * peak / (peak + strength))
