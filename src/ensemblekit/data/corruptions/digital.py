"""Digital corruptions (Hendrycks & Dietterich, 2019, CIFAR-10-C).

Contrast, brightness, saturate, pixelate, JPEG compression and the elastic transform.

Parameters are those of the CIFAR-10-C generator ``make_cifar_c.py``. Pixelate and JPEG run Pillow per
image (the generator's own calls, so they match it exactly); the others are batched torch code.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ensemblekit.data.corruptions._ops import (
    bilinear_sample,
    gaussian_blur,
    hsv_to_rgb,
    rgb_to_hsv,
    to_float,
    to_uint8,
    uniform,
)
from ensemblekit.data.corruptions.registry import CORRUPTIONS, param

CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)
SATURATE = ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2))  # scale, shift of the saturation
JPEG_QUALITY = (80, 65, 58, 50, 40)
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
ELASTIC = ((0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
"""(alpha, sigma, affine range) as fractions of the image size (the generator multiplies them by 32)."""


@CORRUPTIONS.register("contrast")
def contrast(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """``(x - mean) c + mean`` with the per-image, per-channel mean; ``c = 0.75, 0.5, 0.4, 0.3, 0.15``."""
    x = to_float(images)
    mean = x.mean(dim=(2, 3), keepdim=True)
    return to_uint8((x - mean) * param(CONTRAST, severity) + mean)


@CORRUPTIONS.register("brightness")
def brightness(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """HSV value ``v <- clip(v + c)``, ``c = 0.05, 0.1, 0.15, 0.2, 0.3``."""
    hsv = rgb_to_hsv(to_float(images))
    hsv[:, 2] = (hsv[:, 2] + param(BRIGHTNESS, severity)).clamp(0, 1)
    return to_uint8(hsv_to_rgb(hsv))


@CORRUPTIONS.register("saturate")
def saturate(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """HSV saturation ``s <- clip(s a + b)``, ``(a, b) = (0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)``."""
    scale, shift = param(SATURATE, severity)
    hsv = rgb_to_hsv(to_float(images))
    hsv[:, 1] = (hsv[:, 1] * scale + shift).clamp(0, 1)
    return to_uint8(hsv_to_rgb(hsv))


def _per_image(images: torch.Tensor, fn) -> torch.Tensor:
    arr = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    out = np.stack([np.asarray(fn(Image.fromarray(a)).convert("RGB")) for a in arr])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)


@CORRUPTIONS.register("jpeg_compression")
def jpeg_compression(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Pillow JPEG encode and decode at quality ``80, 65, 58, 50, 40`` (default 4:2:0 chroma subsampling)."""
    quality = param(JPEG_QUALITY, severity)

    def jpeg(img: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        buf.seek(0)
        return Image.open(buf)

    return _per_image(images, jpeg)


@CORRUPTIONS.register("pixelate")
def pixelate(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Pillow box downscale to ``int(size c)``, ``c = 0.95, 0.9, 0.85, 0.75, 0.65``, and box upscale back."""
    c = param(PIXELATE, severity)
    h, w = images.shape[-2:]
    small = (max(1, int(w * c)), max(1, int(h * c)))
    return _per_image(images, lambda img: img.resize(small, Image.BOX).resize((w, h), Image.BOX))


def _affine_inverse(src_pts: torch.Tensor, dst_pts: torch.Tensor) -> torch.Tensor:
    """``[B, 2, 3]`` affine maps taking ``dst_pts`` to ``src_pts`` (``[B, 3, 2]`` (x, y) points each)."""
    ones = torch.ones(*dst_pts.shape[:2], 1, dtype=dst_pts.dtype)
    a = torch.cat([dst_pts, ones], dim=2)  # [B, 3, 3]: rows (x, y, 1)
    return torch.linalg.solve(a, src_pts).transpose(1, 2)  # a @ X = src -> X [B, 3, 2]


@CORRUPTIONS.register("elastic_transform")
def elastic_transform(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Random affine warp, then a smooth random displacement field, both sampled bilinearly.

    With ``S`` the image size and ``(alpha, sigma, r) = S * ELASTIC[severity]``: the three points
    ``c + s, (c0 + s, c1 - s), c - s`` (``c = S // 2``, ``s = S // 3``) move by ``U(-r, r)`` and the image is
    warped by the affine map they define (OpenCV ``warpAffine``, ``BORDER_REFLECT_101``); then pixel
    ``(i, j)`` takes the value at ``(i + dy, j + dx)`` with ``dx, dy = alpha * gaussian(U(-1, 1), sigma)``
    (scikit-image ``gaussian``, ``mode="reflect"``, ``truncate=3``; SciPy ``map_coordinates(order=1,
    mode="reflect")``).
    """
    x = to_float(images)
    b, _, h, w = x.shape
    size = min(h, w)
    alpha, sigma, spread = (v * size for v in param(ELASTIC, severity))
    centre = torch.tensor([w // 2, h // 2], dtype=torch.float64)
    s = size // 3
    pts1 = torch.stack([centre + s, torch.stack([centre[0] + s, centre[1] - s]), centre - s])  # (x, y)
    pts2 = pts1.unsqueeze(0) + uniform((b, 3, 2), -spread, spread, generator).double().cpu()
    inv = _affine_inverse(pts1.unsqueeze(0).expand(b, 3, 2), pts2)  # dst -> src
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    grid = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(-1, 3)  # [HW, 3]
    src = torch.einsum("bij,nj->bni", inv, grid).reshape(b, h, w, 2)
    x = bilinear_sample(x, src[..., 1].float(), src[..., 0].float(), "mirror")
    field = uniform((2, b, h, w), -1.0, 1.0, generator).cpu()
    dx = gaussian_blur(field[0], sigma, mode="reflect", truncate=3.0) * alpha
    dy = gaussian_blur(field[1], sigma, mode="reflect", truncate=3.0) * alpha
    rows = torch.arange(h, dtype=torch.float32).view(1, h, 1) + dy
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, w) + dx
    return to_uint8(bilinear_sample(x, rows.to(x.device), cols.to(x.device), "reflect"))
