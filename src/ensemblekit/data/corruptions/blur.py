"""Blur corruptions (Hendrycks & Dietterich, 2019, CIFAR-10-C), batched.

Parameters are those of the CIFAR-10-C generator ``make_cifar_c.py``. Defocus, Gaussian and zoom blur are
deterministic and computed as the generator computes them (up to float32 rounding); glass blur reproduces
the generator's pixel moves with torch random numbers; motion blur re-implements ImageMagick's
``MotionBlurImage`` kernel (see ``docs/robustness.md``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from ensemblekit.data.corruptions._ops import (
    DENSE_MAX_PIXELS,
    apply_dense,
    border_index,
    dense_operator,
    filter_matrix,
    gaussian_blur,
    separable,
    to_float,
    to_uint8,
    uniform,
)
from ensemblekit.data.corruptions.registry import CORRUPTIONS, param

DEFOCUS = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))  # disk radius, anti-alias sigma
GLASS = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))  # sigma, max shift, iterations
MOTION = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))  # ImageMagick radius, sigma
ZOOM = tuple(np.arange(1, top, 0.01) for top in (1.06, 1.11, 1.16, 1.21, 1.26))  # as np.arange in the generator
GAUSSIAN = (0.4, 0.6, 0.7, 0.8, 1.0)
DENSE_MIN_BATCH = 64
"""Batches from this size on use the cached dense operator (its one-off construction costs ~0.1 s)."""


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The generator's ``disk``: a normalised aliased disk on a 17x17 grid smoothed by a 3x3 Gaussian.

    ``K0[i, j] = 1[i^2 + j^2 <= radius^2] / count`` for ``i, j in -8..8`` (radius <= 8), then OpenCV
    ``GaussianBlur(ksize=3, sigma=alias_blur)``; cropped to its non-zero support.
    """
    half = 8 if radius <= 8 else int(radius)
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((grid[None, :] ** 2 + grid[:, None] ** 2) <= radius**2).double()
    disk /= disk.sum()
    g = torch.exp(-((torch.arange(-1, 2, dtype=torch.float64)) ** 2) / (2 * alias_blur**2))
    g /= g.sum()
    n = disk.shape[0]
    smooth = filter_matrix(g, n, "mirror")  # BORDER_REFLECT_101; the disk is zero near the border anyway
    kernel = smooth @ disk @ smooth.T
    nz = kernel.abs().sum(0) > 0
    keep = torch.nonzero(nz).flatten()
    lo, hi = int(keep.min()), int(keep.max())
    r = max(half - lo, hi - half)
    return kernel[half - r : half + r + 1, half - r : half + r + 1]


def _depthwise(x: torch.Tensor, kernel: torch.Tensor, pad_mode: str = "reflect") -> torch.Tensor:
    """Correlate every channel of ``x`` ``[B, C, H, W]`` with a square odd ``kernel`` (reflect-101 border)."""
    b, c, h, w = x.shape
    r = kernel.shape[0] // 2
    flat = F.pad(x.reshape(b * c, 1, h, w), (r, r, r, r), mode=pad_mode)
    return F.conv2d(flat, kernel.to(x)[None, None]).reshape(b, c, h, w)


@CORRUPTIONS.register("defocus_blur")
def defocus_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Convolution with :func:`disk_kernel` (OpenCV ``filter2D``, ``BORDER_REFLECT_101``)."""
    radius, alias = param(DEFOCUS, severity)
    x = to_float(images)
    h, w = x.shape[-2:]
    if h * w <= DENSE_MAX_PIXELS and x.shape[0] >= DENSE_MIN_BATCH:
        return to_uint8(apply_dense(x, _defocus_matrix(radius, alias, h, w)))
    return to_uint8(_depthwise(x, disk_kernel(radius, alias)))


@functools.lru_cache(maxsize=32)
def _defocus_matrix(radius: float, alias: float, h: int, w: int) -> torch.Tensor:
    return dense_operator(lambda e: _depthwise(e, disk_kernel(radius, alias)), h, w)


@CORRUPTIONS.register("gaussian_blur")
def gaussian_blur_corruption(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """scikit-image ``gaussian`` with ``sigma = 0.4, 0.6, 0.7, 0.8, 1`` (a CIFAR-10-C extra)."""
    return to_uint8(gaussian_blur(to_float(images), param(GAUSSIAN, severity)))


def _shift_pixels(x: torch.Tensor, max_delta: int, generator: torch.Generator) -> torch.Tensor:
    """One pass of the generator's local pixel shuffle, vectorised.

    The generator visits ``h, w`` from ``H - d`` down to ``d + 1`` and "swaps" ``x[h, w]`` with
    ``x[h + dy, w + dx]``, ``dx, dy ~ U{-d, ..., d - 1}``. The tuple swap on NumPy views copies instead of
    swapping: ``x[h, w]`` takes the value at the offset position and that position is unchanged. With
    ``d = 1`` (all CIFAR severities) every source position is visited after its target in that order, so
    the pass equals a gather from the image as it was before the pass, which is what this computes.
    """
    b, _, h, w = x.shape
    d = max_delta
    rows = torch.arange(h).view(1, h, 1).expand(b, h, w)
    cols = torch.arange(w).view(1, 1, w).expand(b, h, w)
    dy = torch.randint(-d, d, (b, h, w), generator=generator, device=generator.device).cpu()
    dx = torch.randint(-d, d, (b, h, w), generator=generator, device=generator.device).cpu()
    inside = (rows > d) & (rows <= h - d) & (cols > d) & (cols <= w - d)
    src_r = torch.where(inside, (rows + dy).clamp(0, h - 1), rows)
    src_c = torch.where(inside, (cols + dx).clamp(0, w - 1), cols)
    idx = (src_r * w + src_c).reshape(b, 1, -1).expand(-1, x.shape[1], -1).to(x.device)
    return torch.gather(x.reshape(b, x.shape[1], -1), 2, idx).reshape(x.shape)


@CORRUPTIONS.register("glass_blur")
def glass_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur (``sigma``), quantise to uint8, ``iterations`` local pixel shuffles, Gaussian blur again."""
    sigma, max_delta, iterations = param(GLASS, severity)
    x = to_uint8(gaussian_blur(to_float(images), sigma))
    for _ in range(iterations):
        x = _shift_pixels(x, max_delta, generator)
    return to_uint8(gaussian_blur(to_float(x), sigma))


def motion_offsets(radius: float, angles: torch.Tensor) -> torch.Tensor:
    """Integer tap offsets ``[B, taps, 2]`` (row, column) of ImageMagick's motion blur along ``angles`` (degrees).

    ``taps = 2 ceil(radius) + 1``; tap ``i`` sits at ``(ceil(i sin a - 0.5), ceil(i cos a - 0.5))``.
    """
    taps = 2 * math.ceil(radius) + 1
    i = torch.arange(taps, dtype=torch.float64).view(1, -1)
    a = angles.double().view(-1, 1) * (math.pi / 180.0)
    return torch.stack([torch.ceil(i * torch.sin(a) - 0.5), torch.ceil(i * torch.cos(a) - 0.5)], dim=-1).long()


def motion_weights(radius: float, sigma: float) -> torch.Tensor:
    """One-sided Gaussian tap weights ``exp(-i^2 / (2 sigma^2))``, ``i = 0..2 ceil(radius)``, normalised."""
    i = torch.arange(2 * math.ceil(radius) + 1, dtype=torch.float64)
    w = torch.exp(-(i**2) / (2 * sigma**2))
    return w / w.sum()


def motion_blur_float(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick's ``MotionBlurImage`` line kernel on float images ``[B, C, H, W]``, one angle per image.

    ``y[r, c] = sum_i w_i x[r + dr_i, c + dc_i]`` with the taps of :func:`motion_offsets` and the weights of
    :func:`motion_weights` (edge pixels repeated, ImageMagick's default virtual-pixel method); not rounded.
    """
    b, ch, h, w = x.shape
    offsets = motion_offsets(radius, angles.cpu())  # [B, T, 2]
    weights = motion_weights(radius, sigma).float()
    flat = x.reshape(b, ch, h * w)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    out = torch.zeros_like(flat)
    for t in range(offsets.shape[1]):
        r = border_index(rows + offsets[:, t, 0].view(b, 1, 1), h, "nearest")
        c = border_index(cols + offsets[:, t, 1].view(b, 1, 1), w, "nearest")
        idx = (r * w + c).reshape(b, 1, -1).expand(-1, ch, -1).to(x.device)
        out += weights[t] * torch.gather(flat, 2, idx)
    return out.reshape(b, ch, h, w)


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Float ``[0, 1]`` -> ``uint8`` rounded to the nearest level, as ImageMagick writes its result."""
    return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)


@CORRUPTIONS.register("motion_blur")
def motion_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """ImageMagick ``MotionBlurImage(radius, sigma, angle)``, angle ``~ U(-45, 45)`` degrees per image.

    ``y[r, c] = sum_i w_i x[r + dr_i, c + dc_i]`` (edge pixels repeated), rounded to uint8 as ImageMagick does.
    """
    radius, sigma = param(MOTION, severity)
    angles = uniform((images.shape[0],), -45.0, 45.0, generator).cpu()
    return quantise(motion_blur_float(to_float(images), radius, sigma, angles))


def zoom_matrix(n: int, factor: float) -> torch.Tensor:
    """``[n, n]`` matrix of the generator's ``clipped_zoom`` along one axis (SciPy ``zoom(order=1)``).

    Crop ``ch = ceil(n / factor)`` pixels from ``top = (n - ch) // 2``, zoom them to ``m = round(ch * factor)``
    pixels (output ``j`` samples input ``j (ch - 1) / (m - 1)`` linearly), keep ``n`` from ``(m - n) // 2``.
    """
    ch = int(np.ceil(n / factor))
    top = (n - ch) // 2
    m = round(ch * factor)
    trim = (m - n) // 2
    j = torch.arange(trim, trim + n, dtype=torch.float64)
    src = j * (ch - 1) / (m - 1) if m > 1 else torch.zeros_like(j)
    lo = torch.floor(src).long().clamp(0, ch - 1)
    frac = src - lo
    hi = (lo + 1).clamp(max=ch - 1)
    out = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.arange(n)
    out.index_put_((rows, top + lo), 1 - frac, accumulate=True)
    out.index_put_((rows, top + hi), frac, accumulate=True)
    return out


@CORRUPTIONS.register("zoom_blur")
def zoom_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Mean of the image and its centre zooms by factors ``1, 1.01, ..., 1.05 .. 1.25`` (per severity)."""
    x = to_float(images)
    h, w = x.shape[-2:]
    if h * w <= DENSE_MAX_PIXELS and x.shape[0] >= DENSE_MIN_BATCH:
        return to_uint8(apply_dense(x, _zoom_operator(severity, h, w)))
    return to_uint8(_zoom_mean(x, severity))


def _zoom_mean(x: torch.Tensor, severity: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    factors = param(ZOOM, severity)
    out = x.clone()
    for z in factors:
        out += separable(x, zoom_matrix(h, float(z)), zoom_matrix(w, float(z)))
    return out / (len(factors) + 1)


@functools.lru_cache(maxsize=32)
def _zoom_operator(severity: int, h: int, w: int) -> torch.Tensor:
    return dense_operator(lambda e: _zoom_mean(e, severity), h, w)
