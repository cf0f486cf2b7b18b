"""Frost (Hendrycks & Dietterich, 2019, CIFAR-10-C) over procedurally generated, seeded frost textures.

The generator blends the image with a random 32x32 crop of one of its frost photographs (``frost1.png`` ..
``frost5.jpg``, resized by 0.2): ``clip(a x + b F)``. The photographs are not shipped here; instead every call
grows :data:`FROST_TEXTURES` frost-like textures from the generator (a hazy plasma-fractal film plus branching
ice needles, tinted blue-white) and crops each image's frost from one of them, exactly as the generator crops
its photographs. The blend and its parameters are the generator's; the textures' statistics are ours
(``docs/robustness.md``).
"""

from __future__ import annotations

import math

import torch

from ensemblekit.data.corruptions._ops import to_float, to_uint8, uniform
from ensemblekit.data.corruptions.registry import CORRUPTIONS, param
from ensemblekit.data.corruptions.weather import plasma_fractal

FROST = ((1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))  # image weight a, frost weight b
FROST_TEXTURES = 5
"""Textures per call: the generator draws its photograph with ``randint(5)``, i.e. from its first five."""
TINT = (0.82, 0.91, 1.0)
"""RGB tint of the ice (blue-white, as the photographs)."""
NEEDLE_WIDTH = 0.55
"""Gaussian half-width (pixels) of an ice needle's cross-section."""
SEEDS_PER_PIXEL = 1.0 / 48.0
"""Crystal (dendrite) centres per texture pixel."""
BRANCH_ANGLE = math.pi / 3
"""Side branches leave the main needle at ±60° (the hexagonal habit of ice)."""


WINDOW = 16
"""Side of the pixel window rendered around each segment: a segment spans at most 12 px, and 2 px beyond it the
glow is below 0.002."""


def _segment_intensity(segments: torch.Tensor, brightness: torch.Tensor, size: int) -> torch.Tensor:
    """``[T, size, size]``: max over a texture's segments of ``β exp(-d² / (2 w²))``, d the distance to the segment.

    ``segments`` ``[T, S, 4]`` holds ``(y0, x0, y1, x1)`` in pixels, ``brightness`` ``[T, S]`` the β. The distance
    from pixel centre p to segment ab is ``|p - a - t (b - a)|`` with ``t = clip((p - a)·(b - a) / |b - a|², 0, 1)``;
    each segment is rendered only in the :data:`WINDOW`-pixel square centred on it, and
    the windows are combined by a scatter-max.
    """
    t_count, s_count, _ = segments.shape
    y0, x0, y1, x1 = (segments[..., k].view(t_count, s_count, 1, 1) for k in range(4))
    top = torch.floor(torch.minimum(y0, y1) + (torch.abs(y1 - y0) - WINDOW) / 2 + 0.5)
    left = torch.floor(torch.minimum(x0, x1) + (torch.abs(x1 - x0) - WINDOW) / 2 + 0.5)
    offs = torch.arange(WINDOW, dtype=torch.float32)
    rows = top + offs.view(1, 1, WINDOW, 1)
    cols = left + offs.view(1, 1, 1, WINDOW)
    py, px = rows + 0.5, cols + 0.5
    dy, dx = y1 - y0, x1 - x0
    t = (((py - y0) * dy + (px - x0) * dx) / (dy * dy + dx * dx).clamp_min(1e-6)).clamp(0.0, 1.0)
    d2 = (py - y0 - t * dy) ** 2 + (px - x0 - t * dx) ** 2
    glow = brightness.view(t_count, s_count, 1, 1) * torch.exp(-d2 / (2 * NEEDLE_WIDTH**2))
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    index = (rows.clamp(0, size - 1) * size + cols.clamp(0, size - 1)).long()
    glow = torch.where(inside, glow, torch.zeros_like(glow))
    out = torch.zeros(t_count, size * size)
    out.scatter_reduce_(1, index.reshape(t_count, -1), glow.reshape(t_count, -1), reduce="amax")
    return out.view(t_count, size, size)


def frost_textures(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``[count, 3, size, size]`` frost-like textures in ``[0, 1]`` (size a power of two), a function of the generator.

    Per texture: a haze ``D`` (plasma fractal, decay 2, in ``[0, 1]``) and ``n = size² / 48`` dendrites; dendrite k
    has a centre ``c ~ U[0, size)²``, direction ``θ ~ U[0, π)``, length ``L ~ U(3, 12)``, brightness
    ``β ~ U(0.5, 1)``: a needle ``c ± (L / 2) u(θ)`` and four side branches of length ``0.4 L`` leaving it at
    ``±60°`` from the points ``c ± (L / 4) u(θ)`` (brightness ``0.8 β``). With ``I`` the needle intensity
    (:func:`_segment_intensity`), the ice is ``g = clip(0.12 + 0.4 D + I (0.45 + 0.55 D), 0, 1)`` and the texture
    ``g · (0.82, 0.91, 1)``: denser, brighter frost where the haze is thick.
    """
    haze = plasma_fractal(count, size, 2.0, generator).float()
    n = max(1, round(size * size * SEEDS_PER_PIXEL))
    centre = uniform((count, n, 2), 0.0, float(size), generator).cpu()
    theta = uniform((count, n), 0.0, math.pi, generator).cpu()
    length = uniform((count, n), 3.0, 12.0, generator).cpu()
    beta = uniform((count, n), 0.5, 1.0, generator).cpu()

    def direction(angle: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1)

    u = direction(theta)
    half = (length / 2).unsqueeze(-1)
    segments = [torch.cat([centre - half * u, centre + half * u], dim=-1)]
    shades = [beta]
    for side in (-0.25, 0.25):
        root = centre + side * length.unsqueeze(-1) * u
        for turn in (-BRANCH_ANGLE, BRANCH_ANGLE):
            tip = root + 0.4 * length.unsqueeze(-1) * direction(theta + turn)
            segments.append(torch.cat([root, tip], dim=-1))
            shades.append(0.8 * beta)
    intensity = _segment_intensity(torch.cat(segments, dim=1), torch.cat(shades, dim=1), size)
    gray = (0.12 + 0.4 * haze + intensity * (0.45 + 0.55 * haze)).clamp(0.0, 1.0)
    return gray.unsqueeze(1) * torch.tensor(TINT).view(1, 3, 1, 1)


def texture_size(h: int, w: int) -> int:
    """Side of the generated textures: the power of two >= 4 max(H, W) (128 for CIFAR), so crops vary."""
    return 1 << (4 * max(h, w) - 1).bit_length()


@CORRUPTIONS.register("frost")
def frost(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """``clip(a x + b F)`` with ``F`` an ``H x W`` crop of one of :data:`FROST_TEXTURES` generated textures.

    Per image the texture index is ``U{0..4}`` and the crop's corner ``U{0..size-H-1} x U{0..size-W-1}``, as the
    generator's ``randint`` draws on its photographs; ``(a, b)`` = (1, 0.2) (1, 0.3) (0.9, 0.4) (0.85, 0.4)
    (0.75, 0.45).
    """
    a, b = param(FROST, severity)
    x = to_float(images)
    n, _, h, w = x.shape
    size = texture_size(h, w)
    textures = frost_textures(FROST_TEXTURES, size, generator)
    dev = generator.device
    pick = torch.randint(0, FROST_TEXTURES, (n,), generator=generator, device=dev).cpu()
    top = torch.randint(0, size - h, (n,), generator=generator, device=dev).cpu()
    left = torch.randint(0, size - w, (n,), generator=generator, device=dev).cpu()
    rows = (top.view(n, 1, 1) + torch.arange(h).view(1, h, 1)).expand(n, h, w)
    cols = (left.view(n, 1, 1) + torch.arange(w).view(1, 1, w)).expand(n, h, w)
    crops = textures[pick.view(n, 1, 1), :, rows, cols].permute(0, 3, 1, 2)  # [n, h, w, 3] -> [n, 3, h, w]
    return to_uint8(a * x + b * crops.to(x))
