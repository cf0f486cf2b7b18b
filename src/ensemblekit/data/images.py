"""Turn user images (``uint8`` tensors, PIL images, files, folders) into one ``uint8 [N, 3, H, W]`` batch.

Images whose size differs from the wanted ``(H, W)`` are resized so that they cover it (scale
``max(H / h, W / w)``, bilinear with antialiasing) and then centre-cropped to ``(H, W)``: the aspect ratio is
kept and nothing is stretched. Images already of size ``(H, W)`` pass unchanged (bit for bit).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ensemblekit.errors import UserError, one_line, shorten

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def resize_and_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` (RGB) scaled to cover ``size = (H, W)`` keeping its aspect ratio, then centre-cropped to it."""
    h, w = size
    if image.height == h and image.width == w:
        return image
    scale = max(h / image.height, w / image.width)
    new_w, new_h = max(w, round(image.width * scale)), max(h, round(image.height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - w) // 2, (new_h - h) // 2
    return image.crop((left, top, left + w, top + h))


def image_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The image files named by ``paths``: files as given, folders searched recursively (sorted by path).

    Raises:
        UserError: for a path that does not exist or a folder without images.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise UserError(f"no such image file or folder: {shorten(str(path), 200)}")
    return out


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file to RGB; an unreadable file is a one-line ``UserError`` naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {shorten(str(path), 200)}: {one_line(e, 160)}") from None


def _tensor_images(t: torch.Tensor) -> list[torch.Tensor]:
    if t.dtype != torch.uint8:
        raise UserError(f"image tensors must be uint8 with values 0..255, got {t.dtype} (use (x * 255).byte())")
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[1] not in (1, 3):
        raise UserError(f"image tensors must be [N, 3, H, W] or [3, H, W] (or 1 channel), got {tuple(t.shape)}")
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return list(t.cpu())


def _as_chw(item: Any, size: tuple[int, int]) -> list[torch.Tensor]:
    if isinstance(item, torch.Tensor):
        images = _tensor_images(item)
        return [
            im if tuple(im.shape[1:]) == size else _pil_to_chw(resize_and_crop(_chw_to_pil(im), size)) for im in images
        ]
    if isinstance(item, Image.Image):
        return [_pil_to_chw(resize_and_crop(item.convert("RGB"), size))]
    if isinstance(item, (str, os.PathLike)):
        return [_pil_to_chw(resize_and_crop(open_image(p), size)) for p in image_files([item])]
    raise UserError(f"cannot read an image from a {type(item).__name__}: give uint8 tensors, PIL images or paths")


def _chw_to_pil(t: torch.Tensor) -> Image.Image:
    return Image.fromarray(t.permute(1, 2, 0).contiguous().numpy())


def _pil_to_chw(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def images_to_tensor(images: Any, size: tuple[int, int]) -> torch.Tensor:
    """One ``uint8 [N, 3, H, W]`` batch of ``images`` at ``size = (H, W)``.

    Args:
        images: A ``uint8`` tensor ``[N, 3, H, W]`` or ``[3, H, W]``, a PIL image, a path to a file or folder,
            or a list of any of these.
        size: The network's input height and width.

    Raises:
        UserError: for a float tensor, a wrong shape, an unreadable file or an unsupported object.
    """
    items: Sequence[Any] = images if isinstance(images, (list, tuple)) else [images]
    out = [chw for item in items for chw in _as_chw(item, size)]
    if not out:
        raise UserError("no images to predict")
    return torch.stack(out)
