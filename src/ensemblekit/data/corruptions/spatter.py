"""Spatter (Hendrycks & Dietterich, 2019; a CIFAR-10-C extra): water drops (severities 1-3) or mud (4-5).

A liquid layer is Gaussian noise smoothed by a Gaussian and thresholded. Water (severities 1-3) shades the
drops by an embossed, histogram-equalised distance to their Canny edges and adds pale turquoise; mud (4-5)
replaces the pixels under the drops' smoothed interior by brown. The OpenCV steps of the generator (``Canny``,
``distanceTransform``, ``blur``, ``equalizeHist``, ``filter2D``) are re-implemented here in batched torch:
:func:`canny`, :func:`chamfer_distance`, :func:`box_blur`, :func:`equalize_hist`, :func:`emboss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ensemblekit.data.corruptions._ops import gaussian_blur, to_float, to_uint8
from ensemblekit.data.corruptions.registry import CORRUPTIONS, param

SPATTER = (  # loc, scale, sigma, threshold, intensity (water) or mud sigma, mud?
    (0.62, 0.1, 0.7, 0.7, 0.5, 0),
    (0.65, 0.1, 0.8, 0.7, 0.5, 0),
    (0.65, 0.3, 1.0, 0.69, 0.5, 0),
    (0.65, 0.1, 0.7, 0.69, 0.6, 1),
    (0.65, 0.1, 0.5, 0.68, 0.6, 1),
)
WATER = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise
MUD = (63 / 255, 42 / 255, 20 / 255)  # brown
CANNY_LOW, CANNY_HIGH = 50, 150
DIST_TRUNC = 20.0
CHAMFER = (1.0, 1.4, 2.1969)
"""OpenCV's 5x5 ``DIST_L2`` chamfer costs: axial, diagonal and knight's-move steps."""
EMBOSS = ((-2.0, -1.0, 0.0), (-1.0, 1.0, 1.0), (0.0, 1.0, 2.0))
TG22 = 13573  # OpenCV Canny: round(tan(22.5°) · 2^15)


def _shift(x: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """``out[..., i, j] = x[..., i + dy, j + dx]``, ``fill`` outside the image."""
    h, w = x.shape[-2:]
    pad = F.pad(x, (2, 2, 2, 2), value=fill)
    return pad[..., 2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w]


def _correlate3(x: torch.Tensor, kernel, mode: str) -> torch.Tensor:
    """3x3 correlation of ``x`` ``[B, 1, H, W]`` (``mode``: ``reflect`` = reflect-101 or ``replicate``)."""
    k = torch.tensor(kernel, dtype=x.dtype, device=x.device).view(1, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode=mode), k)


def box_blur(x: torch.Tensor) -> torch.Tensor:
    """OpenCV ``blur(x, (3, 3))``: the 3x3 mean, reflect-101 border."""
    return _correlate3(x, [[1.0 / 9] * 3] * 3, "reflect")


def canny(image: torch.Tensor, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> torch.Tensor:
    """OpenCV ``Canny(image, low, high)`` (aperture 3, L1 gradient) on uint8-valued ``[B, 1, H, W]``; edges = 1.

    Sobel gradients (replicated border), magnitude ``|gx| + |gy|``; non-maximum suppression along the gradient
    direction quantised as OpenCV does (horizontal if ``|gy| < tan 22.5° |gx|``, vertical if
    ``|gy| > tan 67.5° |gx|``, else the diagonal given by the signs; ``m`` must exceed the first neighbour and
    at least equal the second on the axes, exceed both on diagonals; outside the image the magnitude is 0);
    pixels above ``high`` are edges, and pixels above ``low`` that survived suppression join the edges when
    8-connected to one (hysteresis).
    """
    x = image.double()
    gx = _correlate3(x, [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], "replicate")
    gy = _correlate3(x, [[-1, -2, -1], [0, 0, 0], [1, 2, 1]], "replicate")
    mag = gx.abs() + gy.abs()
    ax, ay = gx.abs(), gy.abs()
    horizontal = ay * 32768 < ax * TG22
    vertical = ~horizontal & (ay * 32768 > ax * (TG22 + 65536))
    s = torch.where(gx * gy < 0, -1, 1)

    def nb(dy: int, dx: int) -> torch.Tensor:
        return _shift(mag, dy, dx, 0.0)

    keep_h = (mag > nb(0, -1)) & (mag >= nb(0, 1))
    keep_v = (mag > nb(-1, 0)) & (mag >= nb(1, 0))
    keep_d = torch.where(s < 0, (mag > nb(-1, 1)) & (mag > nb(1, -1)), (mag > nb(-1, -1)) & (mag > nb(1, 1)))
    keep = torch.where(horizontal, keep_h, torch.where(vertical, keep_v, keep_d))
    candidate = keep & (mag > low)
    edges = candidate & (mag > high)
    while True:
        grown = candidate & (F.max_pool2d(edges.double(), 3, stride=1, padding=1) > 0)
        if torch.equal(grown, edges):
            return edges.to(image.dtype)
        edges = grown


def chamfer_distance(zero: torch.Tensor, limit: float = DIST_TRUNC) -> torch.Tensor:
    """OpenCV ``distanceTransform(DIST_L2, 5)`` truncated at ``limit``: distance to the nearest ``zero`` pixel.

    The 5x5 chamfer metric: the cheapest path of axial (cost 1), diagonal (1.4) and knight's (2.1969) steps
    inside the image. Computed by ``ceil(limit)`` rounds of relaxation ``d ← min(d, d[shifted] + cost)``
    (every path of cost <= limit has at most ``limit`` steps, so every distance <= limit is exact);
    ``min(d, limit)`` is returned (the generator truncates at 20 right after). ``zero`` ``[B, 1, H, W]`` bool.
    """
    a, b, c = CHAMFER
    steps = [(dy, dx, a) for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0))]
    steps += [(dy, dx, b) for dy in (-1, 1) for dx in (-1, 1)]
    steps += [(dy, dx, c) for dy, dx in ((1, 2), (2, 1), (-1, 2), (-2, 1), (1, -2), (2, -1), (-1, -2), (-2, -1))]
    big = 1e9
    h, w = zero.shape[-2:]
    d = torch.where(zero, 0.0, big).float()
    for _ in range(int(limit) + 1):
        pad = F.pad(d, (2, 2, 2, 2), value=big)
        new = d
        for dy, dx, cost in steps:
            new = torch.minimum(new, pad[..., 2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w] + cost)
        if torch.equal(new, d):
            break
        d = new
    return d.clamp(max=limit)


def equalize_hist(x: torch.Tensor) -> torch.Tensor:
    """OpenCV ``equalizeHist`` per image of uint8-valued ``[B, 1, H, W]``.

    With ``h`` the 256-bin histogram, ``i₀`` the lowest occupied level and ``N`` the pixel count:
    ``lut[i₀] = 0``, ``lut[j] = round((cdf[j] - h[i₀]) · 255 / (N - h[i₀]))`` for ``j > i₀``; an image of one level
    is left as it is.
    """
    b = x.shape[0]
    flat = x.reshape(b, -1).long()
    total = flat.shape[1]
    hist = torch.zeros(b, 256, dtype=torch.long).scatter_add_(1, flat, torch.ones_like(flat))
    first = (hist > 0).long().argmax(dim=1, keepdim=True)
    h_first = hist.gather(1, first)
    scale = torch.tensor(255.0, dtype=torch.float32) / (total - h_first).clamp_min(1).float()
    lut = torch.round((hist.cumsum(1) - h_first).float() * scale).clamp(0, 255)
    out = lut.gather(1, flat).to(x.dtype)
    uniform = (h_first == total).expand_as(flat)
    return torch.where(uniform, flat.to(x.dtype), out).reshape(x.shape)


def emboss(x: torch.Tensor) -> torch.Tensor:
    """OpenCV ``filter2D(x, CV_8U, EMBOSS)``: 3x3 correlation (reflect-101), rounded and saturated to 0..255."""
    return _correlate3(x, EMBOSS, "reflect").round().clamp(0, 255)


def liquid_layer(batch: int, h: int, w: int, severity: int, generator: torch.Generator) -> torch.Tensor:
    """``[B, 1, H, W]``: ``N(loc, scale²)`` noise, scikit-image ``gaussian(sigma)``, values below the threshold 0."""
    loc, scale, sigma, threshold, _, _ = param(SPATTER, severity)
    noise = torch.randn((batch, 1, h, w), generator=generator, device=generator.device).cpu().double()
    layer = gaussian_blur(noise * scale + loc, sigma)
    return torch.where(layer < threshold, torch.zeros_like(layer), layer)


def water_shade(liquid: torch.Tensor) -> torch.Tensor:
    """The generator's water mask ``m`` in ``[0, 1]`` (before the intensity factor) from the liquid layer.

    ``L`` = liquid as uint8 (clipped to 255 first; the generator's cast would wrap values above 1, which has
    probability ~1e-30 per pixel here); ``D`` = box blur of the chamfer distance to ``Canny(L, 50, 150)``'s
    edges truncated at 20, truncated to uint8, histogram-equalised, embossed, box-blurred and rounded;
    ``m = L · D / max(L · D)`` (0 when the layer is empty, where the generator would divide by zero).
    """
    lq = (liquid * 255).clamp(0, 255).floor()
    edges = canny(lq)
    dist = box_blur(chamfer_distance(edges > 0)).floor()
    dist = box_blur(emboss(equalize_hist(dist))).round()
    m = lq * dist
    peak = m.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(peak > 0, m / peak.clamp_min(1e-12), torch.zeros_like(m))


@CORRUPTIONS.register("spatter")
def spatter(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Water: ``clip(x + c · m · turquoise)``; mud: ``clip(x (1 - m) + m · brown)`` (Hendrycks & Dietterich, 2019).

    Mud's ``m`` is the scikit-image ``gaussian(sigma)`` of the drops' indicator, set to 0 below 0.8.
    """
    _, _, _, threshold, strength, mud = param(SPATTER, severity)
    x = to_float(images)
    b, _, h, w = x.shape
    liquid = liquid_layer(b, h, w, severity, generator)
    if not mud:
        m = (water_shade(liquid) * strength).to(x)
        color = torch.tensor(WATER, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return to_uint8(x + m * color)
    m = gaussian_blur((liquid > threshold).double(), strength)
    m = torch.where(m < 0.8, torch.zeros_like(m), m).to(x)
    color = torch.tensor(MUD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return to_uint8(x * (1 - m) + color * m)
