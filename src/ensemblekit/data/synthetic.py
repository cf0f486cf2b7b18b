"""A small deterministic image data set that a small CNN learns in a few epochs, for tests and smoke runs.

Each of the 10 classes has a smooth random colour pattern (a 5x5 grid of random colours, mirrored so
that it is left-right symmetric, bilinearly upsampled to 40x40). An image is a random 32x32 window of
its class pattern, blended with up to 40% of another class's pattern, with random brightness and
contrast and uniform pixel noise. Everything derives from a fixed seed through numpy's PCG64 and
plain float arithmetic (no transcendental functions, no reductions), so the data is the same on every
machine, and image ``i`` is the same whatever the number of images requested.
"""

from __future__ import annotations

import numpy as np
import torch

from ensemblekit.data.tensors import ImageTensors

SYNTHETIC_SEED = 20240607
NUM_CLASSES = 10
IMAGE_SIZE = 32
DEFAULT_TRAIN_SIZE = 2000
DEFAULT_TEST_SIZE = 500
CLASSES = [f"pattern_{k}" for k in range(NUM_CLASSES)]

_GRID = 5
_SHIFT = 8  # a 40x40 pattern holds 9x9 windows of 32x32
_CHUNK = 1024
_SPLIT_KEYS = {"train": 1, "test": 2}


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([SYNTHETIC_SEED, *key])))


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of ``[K, g, g, 3]`` control points to ``[K, size, size, 3]``."""
    g = grid.shape[1]
    pos = np.arange(size, dtype=np.float64) * ((g - 1) / (size - 1))
    lo = np.minimum(np.floor(pos).astype(np.int64), g - 2)
    frac = pos - lo
    rows = grid[:, lo] * (1 - frac)[None, :, None, None] + grid[:, lo + 1] * frac[None, :, None, None]
    return rows[:, :, lo] * (1 - frac)[None, None, :, None] + rows[:, :, lo + 1] * frac[None, None, :, None]


def class_patterns() -> np.ndarray:
    """The 10 class patterns, ``float32 [10, 40, 40, 3]`` in ``[0.1, 0.9]``, left-right symmetric."""
    half = _rng(0).random((NUM_CLASSES, _GRID, (_GRID + 1) // 2, 3))
    grid = np.concatenate([half, half[:, :, -2::-1]], axis=2)
    return (0.1 + 0.8 * _upsample(grid, IMAGE_SIZE + _SHIFT)).astype(np.float32)


def _images(patterns: np.ndarray, labels: np.ndarray, draws: dict[str, np.ndarray]) -> np.ndarray:
    shift = np.floor(draws["shift"] * (_SHIFT + 1)).astype(np.int64)
    other = (labels + 1 + np.floor(draws["mix"][:, 0] * (NUM_CLASSES - 1)).astype(np.int64)) % NUM_CLASSES
    lam = (0.4 * draws["mix"][:, 1]).astype(np.float32)[:, None, None, None]
    ar = np.arange(IMAGE_SIZE)
    rows = (shift[:, 0, None] + ar)[:, :, None]
    cols = (shift[:, 1, None] + ar)[:, None, :]
    base = patterns[labels[:, None, None], rows, cols] * (1 - lam) + patterns[other[:, None, None], rows, cols] * lam
    contrast = (0.7 + 0.6 * draws["tone"][:, 0]).astype(np.float32)[:, None, None, None]
    brightness = (0.3 * draws["tone"][:, 1] - 0.15).astype(np.float32)[:, None, None, None]
    noise = 0.4 * draws["noise"] - 0.2
    pixels = 0.5 + contrast * (base - 0.5) + brightness + noise
    return np.floor(np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 3, 1, 2)


def make_synthetic(num_images: int, split: str = "train") -> ImageTensors:
    """Generate ``num_images`` images of the synthetic data set.

    Args:
        num_images: How many images (labels cycle 0..9, so classes are balanced).
        split: ``"train"`` or ``"test"``; the two use independent random streams.

    Returns:
        ``ImageTensors`` with ``uint8 [num_images, 3, 32, 32]`` images.
    """
    if split not in _SPLIT_KEYS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    key = _SPLIT_KEYS[split]
    streams = {name: _rng(key, i) for i, name in enumerate(("shift", "mix", "tone", "noise"))}
    shapes = {"shift": (2,), "mix": (2,), "tone": (2,), "noise": (IMAGE_SIZE, IMAGE_SIZE, 3)}
    patterns = class_patterns()
    labels = np.arange(num_images, dtype=np.int64) % NUM_CLASSES
    out = np.empty((num_images, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for start in range(0, num_images, _CHUNK):
        stop = min(start + _CHUNK, num_images)
        draws = {
            name: streams[name].random(
                (stop - start, *shapes[name]), dtype=np.float32 if name == "noise" else np.float64
            )
            for name in streams
        }
        out[start:stop] = _images(patterns, labels[start:stop], draws)
    return ImageTensors(torch.from_numpy(out), torch.from_numpy(labels), list(CLASSES))
