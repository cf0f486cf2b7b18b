"""Batched building blocks of the corruptions on ``[B, 3, H, W]`` tensors.

Float conversion, separable filters with border modes, bilinear sampling and RGB <-> HSV.

Border modes follow the libraries the reference generator used (Hendrycks & Dietterich, 2019,
``make_cifar_c.py``): ``"nearest"`` (edge value repeated; scikit-image ``gaussian``'s default),
``"reflect"`` (``d c b a | a b c d | d c b a``; SciPy/scikit-image ``reflect``) and ``"mirror"``
(``d c b | a b c d | c b a``; OpenCV ``BORDER_REFLECT_101``, SciPy ``mirror``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BORDER_MODES = ("nearest", "reflect", "mirror")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, 3, H, W]`` -> float32 in ``[0, 1]``."""
    return images.float().div_(255.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float ``[0, 1]`` -> ``uint8`` as the generator's ``np.uint8(np.clip(x, 0, 1) * 255)``: clip, then truncate."""
    return (x.clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def border_index(idx: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map (possibly out-of-range) integer indices into ``[0, n)`` by the border ``mode``."""
    if mode == "nearest":
        return idx.clamp(0, n - 1)
    if n == 1:
        return torch.zeros_like(idx)
    if mode == "reflect":  # period 2n: 0..n-1, n-1..0
        r = torch.remainder(idx, 2 * n)
        return torch.where(r < n, r, 2 * n - 1 - r)
    if mode == "mirror":  # period 2n-2: 0..n-1, n-2..1
        r = torch.remainder(idx, 2 * n - 2)
        return torch.where(r < n, r, 2 * n - 2 - r)
    raise ValueError(f"unknown border mode {mode!r}; expected one of {BORDER_MODES}")


def filter_matrix(weights: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """The ``[n, n]`` matrix ``F`` of a 1-D correlation with ``weights`` (odd length, centred) under a border mode.

    ``(F @ v)[i] = sum_k weights[k] * v[border(i + k - r)]`` with ``r = len(weights) // 2``; kernels longer
    than the signal are folded by the border mode (as SciPy does), which a padded convolution cannot do.
    """
    r = weights.numel() // 2
    rows = torch.arange(n).unsqueeze(1).expand(n, weights.numel())
    cols = border_index(rows + torch.arange(-r, r + 1).unsqueeze(0), n, mode)
    out = torch.zeros(n, n, dtype=weights.dtype)
    out.scatter_add_(1, cols, weights.unsqueeze(0).expand(n, -1).contiguous())
    return out


def separable(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Apply ``rows`` ``[H, H]`` along height and ``cols`` ``[W, W]`` along width: ``rows @ x @ cols.T``."""
    return torch.matmul(torch.matmul(rows.to(x), x), cols.to(x).transpose(0, 1))


def gaussian_weights(sigma: float, truncate: float) -> torch.Tensor:
    """SciPy ``gaussian_filter1d`` weights ``exp(-k^2 / (2 sigma^2))`` for ``|k| <= int(truncate sigma + 0.5)``."""
    radius = int(truncate * float(sigma) + 0.5)
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (k / sigma) ** 2)
    return w / w.sum()


def gaussian_blur(x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """scikit-image ``gaussian(x, sigma)`` per channel of ``x`` ``[..., H, W]`` (identity for ``sigma == 0``)."""
    if sigma <= 1e-15:
        return x
    w = gaussian_weights(sigma, truncate)
    h, wd = x.shape[-2:]
    return separable(x, filter_matrix(w, h, mode), filter_matrix(w, wd, mode))


def bilinear_sample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str) -> torch.Tensor:
    """Sample ``x`` ``[B, C, H, W]`` bilinearly at per-image pixel coordinates ``rows``/``cols`` ``[B, H', W']``.

    ``mode`` is ``"mirror"`` (OpenCV ``BORDER_REFLECT_101``: reflection about the edge pixels' centres) or
    ``"reflect"`` (SciPy ``map_coordinates(order=1, mode="reflect")``: reflection about the image edges).
    Both are ``grid_sample``'s ``reflection`` padding, with ``align_corners`` True and False respectively;
    unlike OpenCV, weights are not rounded to 1/32 pixel.
    """
    h, w = x.shape[-2:]
    if mode == "mirror":
        gx, gy = 2 * cols / max(w - 1, 1) - 1, 2 * rows / max(h - 1, 1) - 1
    elif mode == "reflect":
        gx, gy = (2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1
    else:
        raise ValueError(f"bilinear_sample supports mirror and reflect, got {mode!r}")
    grid = torch.stack([gx, gy], dim=-1).to(x)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=mode == "mirror")


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """scikit-image ``rgb2hsv`` on ``[B, 3, H, W]`` in ``[0, 1]``: hue in ``[0, 1)``, ``s = delta / v``."""
    r, g, b = x.unbind(1)
    v, _ = x.max(dim=1)
    delta = v - x.min(dim=1).values
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(r == v, (g - b) / safe, torch.zeros_like(v))
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    s = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    return torch.stack([h, s, v], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """scikit-image ``hsv2rgb`` on ``[B, 3, H, W]``, in the closed form of its six-sector table.

    Channel ``n`` (``5, 3, 1`` for R, G, B) is ``v - v s clip(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6``,
    which equals the table's ``(v, t, p), (q, v, p), ...`` entries sector by sector.
    """
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(n + h * 6.0, 6.0)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def dense_operator(op, h: int, w: int) -> torch.Tensor:
    """The ``[H W, H W]`` matrix ``K`` of a linear per-channel image operator: ``op(x).flatten() = K @ x.flatten()``.

    Built by applying ``op`` to the ``H W`` basis images once; applying ``K`` is one matrix product, which on
    a CPU is faster than a convolution or many small products for 32x32 images.
    """
    basis = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)
    return op(basis).reshape(h * w, h * w).T.contiguous()


def apply_dense(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply a :func:`dense_operator` matrix to every channel of ``x`` ``[B, C, H, W]``."""
    b, c, h, w = x.shape
    return (x.reshape(b * c, h * w) @ matrix.to(x).T).reshape(b, c, h, w)


DENSE_MAX_PIXELS = 1024
"""Images up to this many pixels (32x32) use :func:`dense_operator` for the linear blurs."""


def uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform draws in ``[low, high)`` from ``generator`` (on its device)."""
    return torch.rand(shape, generator=generator, device=generator.device).mul_(high - low).add_(low)


def degrees(angle: torch.Tensor) -> torch.Tensor:
    """Degrees -> radians."""
    return angle * (math.pi / 180.0)
