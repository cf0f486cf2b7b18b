"""Batched augmentation: shapes, exact crop windows with zero padding, flips, normalisation, determinism."""

from __future__ import annotations

import torch

from ensemblekit.data import augment_batch, normalize
from ensemblekit.data.augment import crop_flip_params

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def _images(b=16, h=32, w=32, seed=0):
    return torch.randint(0, 256, (b, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_normalize_values():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1)
    out = normalize(images, MEAN, STD)
    expected = torch.tensor([(0 - MEAN[0]) / STD[0], (1 - MEAN[1]) / STD[1], (0.2 - MEAN[2]) / STD[2]])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.view(3), expected, rtol=1e-6, atol=1e-6)


def test_shapes_dtype_and_range():
    out = augment_batch(_images(), MEAN, STD, torch.Generator().manual_seed(0))
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    low = torch.tensor([-m / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    high = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()


def test_no_padding_no_flip_equals_normalize():
    images = _images()
    out = augment_batch(images, MEAN, STD, torch.Generator().manual_seed(3), padding=0, flip=False)
    assert torch.equal(out, normalize(images, MEAN, STD))


def test_crop_is_a_zero_padded_window_and_flip_mirrors_it():
    images = _images(b=64, h=8, w=6, seed=1)
    generator = torch.Generator().manual_seed(11)
    rows, cols, flips = crop_flip_params(64, 4, True, generator.clone_state())
    out = augment_batch(images, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), generator)
    pixels = torch.round(out * 255).to(torch.uint8)
    padded = torch.zeros(64, 3, 16, 14, dtype=torch.uint8)
    padded[:, :, 4:12, 4:10] = images
    for b in range(64):
        window = padded[b, :, rows[b] : rows[b] + 8, cols[b] : cols[b] + 6]
        assert torch.equal(pixels[b], window.flip(-1) if flips[b] else window), b
    assert 0 < flips.sum() < 64 and rows.min() == 0 and rows.max() == 8  # both flips and extreme offsets occur
    assert (pixels == 0).any(dim=(1, 2, 3)).sum() > 32  # most windows include padding zeros


def test_padding_is_zero_pixels_before_normalisation():
    images = torch.full((4, 3, 4, 4), 200, dtype=torch.uint8)
    out = augment_batch(images, MEAN, STD, torch.Generator().manual_seed(5), padding=4, flip=False)
    zero = torch.tensor([-m / s for m, s in zip(MEAN, STD)])
    values = {round(v, 4) for v in out[:, 0].flatten().tolist()}
    assert values <= {round(float(zero[0]), 4), round((200 / 255 - MEAN[0]) / STD[0], 4)}


def test_same_generator_state_same_output_and_different_seeds_differ():
    images = _images()
    a = augment_batch(images, MEAN, STD, torch.Generator().manual_seed(42))
    b = augment_batch(images, MEAN, STD, torch.Generator().manual_seed(42))
    c = augment_batch(images, MEAN, STD, torch.Generator().manual_seed(43))
    assert torch.equal(a, b) and not torch.equal(a, c)
