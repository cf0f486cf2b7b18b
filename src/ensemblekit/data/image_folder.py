"""Image-folder data sets: ``<root>/{train,test}/<class>/*.{jpg,jpeg,png}``, decoded once and cached.

Class folders of ``train/`` sorted by name give the label indices; files within a class are taken in
name order. Images are decoded with Pillow to RGB ``uint8`` (in a process pool for large folders) and
must all have the same size, unless ``image_size`` is given: then each is scaled to cover it and centre-cropped
(:func:`ensemblekit.data.images.resize_and_crop`). Decoded arrays go to the
:class:`~ensemblekit.data.cache.DecodeCache`,
keyed by a fingerprint of the folder that is computed with ``os.scandir`` (no decoding), so a second
load only reads two ``.npy`` files per split.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ensemblekit.data.cache import DecodeCache
from ensemblekit.data.tensors import ImageTensors
from ensemblekit.errors import UserError, one_line, shorten

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
POOL_MIN_IMAGES = 4000


@dataclass
class FolderScan:
    """The files of an image folder, found without decoding anything.

    Args:
        root: The folder holding ``train/`` and ``test/``.
        classes: Class names (sorted folder names of ``train/``).
        files: Per split, the image paths in load order.
        labels: Per split, the label of each path.
        total_size: Sum of the file sizes in bytes.
        latest_mtime_ns: Latest modification time of any file.
        names_digest: SHA-1 of the relative paths, in load order.
    """

    root: Path
    classes: list[str]
    files: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    total_size: int = 0
    latest_mtime_ns: int = 0
    names_digest: str = ""

    @property
    def num_files(self) -> int:
        """Number of images over all splits."""
        return sum(len(paths) for paths in self.files.values())

    @property
    def fingerprint(self) -> str:
        """Changes whenever a file is added, removed, renamed, resized or touched."""
        return f"n={self.num_files};size={self.total_size};mtime={self.latest_mtime_ns};names={self.names_digest}"


def _class_dirs(split_dir: Path) -> list[str]:
    with os.scandir(split_dir) as it:
        return sorted(entry.name for entry in it if entry.is_dir() and not entry.name.startswith("."))


def scan_image_folder(root: Path) -> FolderScan:
    """List the images of ``root`` and fingerprint them (one ``stat`` per file via ``os.scandir``).

    Raises:
        UserError: if ``train/`` or ``test/`` is missing, empty, or ``test/`` has an unknown class.
    """
    for split in SPLITS:
        if not (root / split).is_dir():
            layout = f"{root}/{{train,test}}/<class>/*.jpg"
            raise UserError(f"{root} is not an image folder: {root / split} is missing (expected {layout})")
    scan = FolderScan(root=root, classes=_class_dirs(root / "train"))
    if not scan.classes:
        raise UserError(f"{root / 'train'} has no class folders (expected {root}/train/<class>/*.jpg)")
    digest = hashlib.sha1(usedforsecurity=False)
    for split in SPLITS:
        unknown = sorted(set(_class_dirs(root / split)) - set(scan.classes))
        if unknown:
            raise UserError(f"{root / split} has classes that train/ lacks: {', '.join(unknown)}")
        paths: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(scan.classes):
            class_dir = root / split / name
            if not class_dir.is_dir():
                continue
            with os.scandir(class_dir) as it:
                entries = sorted(
                    (e for e in it if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file()), key=lambda e: e.name
                )
            for entry in entries:
                stat = entry.stat()
                scan.total_size += stat.st_size
                scan.latest_mtime_ns = max(scan.latest_mtime_ns, stat.st_mtime_ns)
                digest.update(f"{split}/{name}/{entry.name}\n".encode("utf-8", "surrogateescape"))
                paths.append(entry.path)
            labels.extend([label] * len(entries))
        if not paths:
            raise UserError(f"{root / split} holds no images (*.jpg, *.jpeg, *.png)")
        scan.files[split] = paths
        scan.labels[split] = np.asarray(labels, dtype=np.int64)
    scan.names_digest = digest.hexdigest()
    return scan


def _decode_chunk(paths: list[str], size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``paths`` to one ``uint8 [n, H, W, 3]`` array (one shared size, or each brought to ``size``)."""
    from ensemblekit.data.images import resize_and_crop

    out: np.ndarray | None = None
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
                pixels = np.asarray(rgb if size is None else resize_and_crop(rgb, size))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            # ValueError: e.g. an oversized text chunk; DecompressionBombError: a header claiming huge dimensions
            raise UserError(f"cannot decode image {shorten(path, 200)}: {one_line(e, 160)}") from None
        if out is None:
            out = np.empty((len(paths), *pixels.shape), dtype=np.uint8)
        elif pixels.shape != out.shape[1:]:
            raise UserError(
                f"images differ in size: {path} is {pixels.shape[1]}x{pixels.shape[0]} but {paths[0]} is "
                f"{out.shape[2]}x{out.shape[1]}; images must have the same size unless data.image_size is set"
            )
        out[i] = pixels
    assert out is not None
    return out


def _workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_images(paths: list[str], size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode image files to ``uint8 [N, 3, H, W]``, using a process pool when there are many.

    ``size`` ``(H, W)``: every image is scaled to cover it and centre-cropped; otherwise all must share one size.

    Raises:
        UserError: if a file cannot be decoded or the images differ in size.
    """
    workers = _workers()
    if len(paths) < POOL_MIN_IMAGES or workers < 2:
        parts = [paths]
        chunks = [_decode_chunk(paths, size)]
    else:
        step = -(-len(paths) // (4 * workers))
        parts = [paths[i : i + step] for i in range(0, len(paths), step)]
        method = "fork" if sys.platform == "linux" else None  # fork starts in milliseconds; workers only use Pillow
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            chunks = list(pool.map(functools.partial(_decode_chunk, size=size), parts))
    for part, chunk in zip(parts, chunks):
        if chunk.shape[1:] != chunks[0].shape[1:]:
            raise UserError(
                f"images differ in size: {part[0]} is {chunk.shape[2]}x{chunk.shape[1]} but {paths[0]} is "
                f"{chunks[0].shape[2]}x{chunks[0].shape[1]}; all images of an image-folder data set must have one size"
            )
    return np.ascontiguousarray(np.concatenate(chunks).transpose(0, 3, 1, 2))


def _decode_scan(scan: FolderScan, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Decode every split of ``scan`` in one pass; returns ``{split}_images`` and ``{split}_labels`` arrays."""
    paths = [path for split in SPLITS for path in scan.files[split]]
    images = decode_images(paths) if size is None else decode_images(paths, size)
    arrays, start = {}, 0
    for split in SPLITS:
        stop = start + len(scan.files[split])
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[start:stop], scan.labels[split]
        start = stop
    return arrays


def _matches(arrays: dict[str, np.ndarray], scan: FolderScan) -> bool:
    """Whether cached arrays have the shapes and labels that the scanned folder implies."""
    try:
        return all(
            np.array_equal(arrays[f"{s}_labels"], scan.labels[s])
            and arrays[f"{s}_images"].shape[0] == len(scan.files[s])
            for s in SPLITS
        )
    except KeyError:
        return False


def load_image_folder(
    root: Path, cache_dir: Path | None, image_size: tuple[int, int] | None = None
) -> tuple[ImageTensors, ImageTensors]:
    """Load an image folder's train and test splits, from the decode cache when it is current.

    Args:
        root: The folder holding ``train/`` and ``test/``.
        cache_dir: Decode-cache root, or ``None`` to decode without caching.
        image_size: ``(H, W)`` every image is resized (to cover) and centre-cropped to; ``None``: all images
            must already share one size.

    Returns:
        ``(train, test)``.

    Raises:
        UserError: if the layout is wrong, an image cannot be decoded, or sizes differ.
    """
    root = root.resolve()
    scan = scan_image_folder(root)
    cache = DecodeCache(cache_dir) if cache_dir is not None else None
    fingerprint = scan.fingerprint + ("" if image_size is None else f";resized={image_size[0]}x{image_size[1]}")
    arrays = cache.load(root, fingerprint) if cache is not None else None
    if arrays is not None and _matches(arrays, scan):
        log.info("loaded %s from the decode cache %s", root, cache_dir)
    else:
        log.info("decoding %d images of %s", scan.num_files, root)
        arrays = _decode_scan(scan, image_size)
        if cache is not None:
            cache.save(root, fingerprint, arrays)
    tensors = [
        ImageTensors(
            torch.from_numpy(arrays[f"{s}_images"]), torch.from_numpy(arrays[f"{s}_labels"]), list(scan.classes)
        )
        for s in SPLITS
    ]
    return tensors[0], tensors[1]
