"""Weather corruptions (Hendrycks & Dietterich, 2019, CIFAR-10-C): fog and snow.

Fog adds a batched plasma fractal; snow adds a thresholded, zoomed and motion-blurred noise layer (ImageMagick's
motion blur re-implemented in :func:`ensemblekit.data.corruptions.blur.motion_blur_float`). Frost is in
:mod:`ensemblekit.data.corruptions.frost`, spatter in :mod:`ensemblekit.data.corruptions.spatter`.
"""

from __future__ import annotations

import torch

from ensemblekit.data.corruptions._ops import separable, to_float, to_uint8, uniform
from ensemblekit.data.corruptions.blur import motion_blur_float, quantise, zoom_matrix
from ensemblekit.data.corruptions.registry import CORRUPTIONS, param

FOG = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))  # strength, wibble decay
SNOW = (  # loc, scale, zoom, threshold, motion radius, motion sigma, image weight
    (0.1, 0.2, 1.0, 0.6, 8, 3, 0.95),
    (0.1, 0.2, 1.0, 0.5, 10, 4, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
)
GRAY = (0.299, 0.587, 0.114)
"""OpenCV ``COLOR_RGB2GRAY`` weights (ITU-R BT.601 luma)."""


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


def snow_layer(batch: int, h: int, w: int, severity: int, generator: torch.Generator) -> torch.Tensor:
    """The generator's snow layer ``[B, 1, H, W]`` in ``[0, 1]`` (before the 180° copy is added).

    ``n ~ N(loc, scale²)`` per pixel; centre zoom by ``zoom`` (the generator's ``clipped_zoom``, SciPy
    ``zoom(order=1)``); values below ``threshold`` set to 0; clip to ``[0, 1]`` and truncate to uint8 (the PNG
    handed to ImageMagick); ImageMagick motion blur with ``radius``, ``sigma`` and an angle ``~ U(-135, -45)``
    degrees per image (falling snow), rounded to uint8; divided by 255.
    """
    loc, scale, zoom, threshold, radius, sigma, _ = param(SNOW, severity)
    noise = torch.randn((batch, 1, h, w), generator=generator, device=generator.device).cpu() * scale + loc
    if zoom != 1.0:
        noise = separable(noise, zoom_matrix(h, zoom), zoom_matrix(w, zoom))
    noise = torch.where(noise < threshold, torch.zeros_like(noise), noise)
    layer = to_uint8(noise).float() / 255.0
    angles = uniform((batch,), -135.0, -45.0, generator).cpu()
    return quantise(motion_blur_float(layer, radius, sigma, angles)).float() / 255.0


@CORRUPTIONS.register("snow")
def snow(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """``clip(x' + S + rot180(S))`` with ``x' = a x + (1 - a) max(x, 1.5 gray(x) + 0.5)`` and S the snow layer.

    ``a`` is the image weight (0.95 .. 0.8): the image is whitened towards a bright grey version of itself,
    then the motion-blurred flakes and their 180°-rotated copy are added (Hendrycks & Dietterich, 2019).
    """
    weight = param(SNOW, severity)[6]
    x = to_float(images)
    b, _, h, w = x.shape
    layer = snow_layer(b, h, w, severity, generator).to(x)
    gray = (x * torch.tensor(GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = weight * x + (1.0 - weight) * torch.maximum(x, gray * 1.5 + 0.5)
    return to_uint8(x + layer + torch.rot90(layer, 2, dims=(2, 3)))
