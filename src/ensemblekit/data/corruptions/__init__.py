"""CIFAR-10-C-style corruptions (Hendrycks & Dietterich, 2019), batched in torch, 5 severities each.

Every corruption takes ``uint8`` images ``[B, 3, H, W]`` and returns ``uint8`` images of the same shape,
with the severity parameters of the CIFAR-10-C generator (``make_cifar_c.py``). Random corruptions draw
from a ``torch.Generator``, so a seed fixes the result (for a given batch composition).

Example:
    >>> import torch
    >>> x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    >>> y = corrupt(x, "gaussian_noise", 3, seed=0)
    >>> y.shape, y.dtype
    (torch.Size([4, 3, 32, 32]), torch.uint8)

``docs/robustness.md`` lists how each corruption differs from the original generator.
"""

from __future__ import annotations

import torch

from ensemblekit.data.corruptions import blur, digital, frost, noise, spatter, weather  # noqa: F401  (registers)
from ensemblekit.data.corruptions.registry import CORRUPTIONS, SEVERITIES
from ensemblekit.errors import UserError, shorten

BENCHMARK_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
"""The 15 CIFAR-10-C benchmark corruptions, in the paper's order (noise, blur, weather, digital); ``all`` in the
CLI means these."""

EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
"""The generator's 4 held-out extras (CIFAR-10-C ships them too), in its order; ``extra`` in the CLI."""


def list_corruptions() -> list[str]:
    """Names of all registered corruptions, sorted."""
    return CORRUPTIONS.names()


def resolve_corruptions(names: list[str] | tuple[str, ...] | None) -> list[str]:
    """Expand ``None``/``[]``/``"all"`` to :data:`BENCHMARK_CORRUPTIONS`, ``"extra"`` to the extras; split commas.

    Raises:
        UserError: on an unknown name (one line listing the valid ones).
    """
    out: list[str] = []
    for item in names or ["all"]:
        for name in (p.strip() for p in str(item).split(",")):
            if not name:
                continue
            if name == "all":
                out.extend(BENCHMARK_CORRUPTIONS)
            elif name == "extra":
                out.extend(EXTRA_CORRUPTIONS)
            else:
                CORRUPTIONS.get(name)  # raises UserError listing the valid names
                out.append(name)
    return list(dict.fromkeys(out))


def parse_severities(text: str | None) -> list[int]:
    """``"1-5"``, ``"3"``, ``"1,3,5"`` or ``None`` (all) -> sorted severities in 1..5.

    Raises:
        UserError: on anything else.
    """
    if text is None or str(text).strip() == "":
        return list(SEVERITIES)
    out: set[int] = set()
    shown = shorten(str(text), 40)
    try:
        for part in str(text).split(","):
            part = part.strip()
            lo, _, hi = part.partition("-") if "-" in part[1:] else (part, "", part)
            lo_i, hi_i = int(lo), int(hi)
            if not (SEVERITIES[0] <= lo_i <= hi_i <= SEVERITIES[-1]):  # checked before any range is built
                raise UserError(f"bad severities {shown}: severities are 1 to 5")
            out.update(range(lo_i, hi_i + 1))
    except ValueError:
        raise UserError(f"bad severities {shown}: expected e.g. 1-5, 3 or 1,3,5") from None
    return sorted(out)


def corrupt(
    images: torch.Tensor,
    name: str,
    severity: int,
    generator: torch.Generator | None = None,
    *,
    seed: int | None = None,
) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to ``uint8`` images ``[B, 3, H, W]``.

    Args:
        images: ``torch.uint8`` images ``[B, 3, H, W]`` (any device; random draws are made on the
            generator's device).
        name: A registered corruption (:func:`list_corruptions`).
        severity: 1 (mild) to 5 (strong).
        generator: Source of randomness; default a CPU generator seeded with ``seed`` (default 0).
        seed: Seed of the default generator (ignored when ``generator`` is given).

    Returns:
        The corrupted images, ``uint8``, same shape and device.

    Raises:
        UserError: unknown name or severity outside 1..5.
        ValueError: images that are not ``uint8 [B, 3, H, W]``.
    """
    fn = CORRUPTIONS.get(name)
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise UserError(f"severity must be 1..5, got {severity!r}")
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    if images.shape[0] == 0:
        return images.clone()
    return fn(images, severity, generator)


__all__ = [
    "BENCHMARK_CORRUPTIONS",
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "SEVERITIES",
    "corrupt",
    "list_corruptions",
    "parse_severities",
    "resolve_corruptions",
]
