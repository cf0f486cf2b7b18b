"""CIFAR-10-C-style corruptions: shape/dtype, determinism, severity ordering, and building blocks vs references."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from ensemblekit.data.corruptions import (
    BENCHMARK_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    corrupt,
    list_corruptions,
    parse_severities,
    resolve_corruptions,
)
from ensemblekit.data.corruptions._ops import (
    bilinear_sample,
    border_index,
    filter_matrix,
    hsv_to_rgb,
    rgb_to_hsv,
)
from ensemblekit.data.corruptions.blur import _depthwise, _zoom_mean, disk_kernel, motion_offsets, zoom_matrix
from ensemblekit.data.corruptions.weather import plasma_fractal
from ensemblekit.data.synthetic import make_synthetic
from ensemblekit.errors import UserError

RANDOM = {
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
    "glass_blur",
    "motion_blur",
    "fog",
    "elastic_transform",
    "snow",
    "frost",
    "spatter",
}
NOT_MONOTONE = {"elastic_transform", "glass_blur", "saturate", "frost", "spatter"}  # by the generator's parameters


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return make_synthetic(24, "test").images


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


def test_registry_has_the_required_corruptions():
    required = {
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "defocus_blur",
        "glass_blur",
        "motion_blur",
        "zoom_blur",
        "contrast",
        "brightness",
        "saturate",
        "fog",
        "pixelate",
        "jpeg_compression",
        "elastic_transform",
        "snow",
        "frost",
        "spatter",
    }
    assert required <= set(list_corruptions())
    assert resolve_corruptions(None) == list(BENCHMARK_CORRUPTIONS)
    # the paper's 15 in its order, plus the generator's 4 extras: every registered corruption is one of the 19
    assert BENCHMARK_CORRUPTIONS[7:10] == ("snow", "frost", "fog") and len(BENCHMARK_CORRUPTIONS) == 15
    assert resolve_corruptions(["extra"]) == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert sorted(BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS) == list_corruptions()
    assert resolve_corruptions(["fog,contrast", "fog"]) == ["fog", "contrast"]
    with pytest.raises(UserError, match="unknown corruption 'fgo'"):
        resolve_corruptions(["fgo"])


@pytest.mark.parametrize("name", list_corruptions())
def test_corruption_contract(name, images):
    clean = images.clone()
    dists = []
    for severity in range(1, 6):
        out = corrupt(images, name, severity, seed=7)
        assert out.shape == images.shape and out.dtype == torch.uint8
        assert torch.equal(images, clean)  # input untouched
        assert torch.equal(out, corrupt(images, name, severity, seed=7))  # deterministic for a seed
        dists.append(_distance(out, images))
    assert min(dists) > 0.3, dists  # every severity changes the images
    if name in RANDOM:
        assert not torch.equal(corrupt(images, name, 3, seed=1), corrupt(images, name, 3, seed=2))
    else:
        assert torch.equal(corrupt(images, name, 3, seed=1), corrupt(images, name, 3, seed=2))
    if name not in NOT_MONOTONE:
        assert all(b >= a - 1e-6 for a, b in itertools.pairwise(dists)), dists
        assert dists[-1] > dists[0] * 1.1, dists


def test_non_monotone_ones_behave_as_the_generator_defines(images):
    hsv = rgb_to_hsv(images.float() / 255)
    sat = [rgb_to_hsv(corrupt(images, "saturate", s).float() / 255)[:, 1].mean().item() for s in range(1, 6)]
    base = hsv[:, 1].mean().item()
    assert sat[1] < sat[0] < base < sat[2] < sat[3] < sat[4]  # severities 1-2 desaturate, 3-5 saturate
    # glass blur: two shuffle passes (severity 4) move pixels further than one (severity 2), same sigma
    assert _distance(corrupt(images, "glass_blur", 4), images) > _distance(corrupt(images, "glass_blur", 2), images)


def test_bad_arguments(images):
    with pytest.raises(UserError, match="severity"):
        corrupt(images, "fog", 6)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images.float(), "fog", 1)
    assert corrupt(images[:0], "fog", 1).shape == (0, 3, 32, 32)
    assert parse_severities("1-3,5") == [1, 2, 3, 5]
    assert parse_severities(None) == [1, 2, 3, 4, 5]
    for bad in ("0-2", "x", "6"):
        with pytest.raises(UserError, match="severities"):
            parse_severities(bad)


def test_noise_statistics():
    flat = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    shot = corrupt(flat, "shot_noise", 5, seed=0).double() * 50 / 255  # ~ Poisson(25.1) counts, floored
    assert abs(shot.var().item() - 128 / 255 * 50) < 1.0
    imp = corrupt(flat, "impulse_noise", 5, seed=0)
    changed = (imp != flat).double().mean().item()
    assert abs(changed - 0.07) < 0.005 and set(imp[imp != flat].unique().tolist()) <= {0, 255}
    g = corrupt(flat, "gaussian_noise", 5, seed=0).double() / 255 - 128 / 255
    assert abs(g.std().item() - 0.10) < 0.005


def test_border_modes_and_filter_matrix_match_padding():
    assert border_index(torch.tensor([-2, -1, 4, 5]), 4, "reflect").tolist() == [1, 0, 3, 2]
    assert border_index(torch.tensor([-2, -1, 4, 5]), 4, "mirror").tolist() == [2, 1, 2, 1]
    x = torch.rand(2, 9, dtype=torch.float64)
    w = torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1], dtype=torch.float64)
    for mode, pad in (("mirror", "reflect"), ("nearest", "replicate")):
        ref = F.conv1d(F.pad(x.unsqueeze(1), (2, 2), mode=pad), w.view(1, 1, -1)).squeeze(1)
        assert torch.allclose(x @ filter_matrix(w, 9, mode).T, ref)
    assert torch.allclose(
        filter_matrix(torch.ones(31, dtype=torch.float64) / 31, 8, "reflect").sum(1), torch.ones(8).double()
    )


def test_bilinear_sample_matches_index_reference():
    x = torch.rand(1, 1, 5, 6)
    rows = torch.tensor([[[-0.7, 0.3, 2.5, 4.6]]])
    cols = torch.tensor([[[5.4, -0.2, 1.5, 0.0]]])
    for mode in ("mirror", "reflect"):
        out = bilinear_sample(x, rows, cols, mode).flatten()
        r0, c0 = rows.floor().long(), cols.floor().long()
        fr, fc = rows - r0, cols - c0
        ref = 0
        for dr, wr in ((0, 1 - fr), (1, fr)):
            for dc, wc in ((0, 1 - fc), (1, fc)):
                ref = ref + x[0, 0][border_index(r0 + dr, 5, mode), border_index(c0 + dc, 6, mode)] * wr * wc
        assert torch.allclose(out, ref.flatten(), atol=1e-5), mode


def test_hsv_round_trip_and_sector_table():
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    hsv = rgb_to_hsv(x)
    assert torch.allclose(hsv_to_rgb(hsv), x, atol=1e-9)
    h, s, v = hsv.unbind(1)
    i = torch.floor(h * 6).long() % 6
    f = h * 6 - torch.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    ref = torch.stack([torch.stack(table[k], 1)[:, :, 0, 0] for k in range(6)])  # only pixel (0, 0) below
    assert torch.allclose(hsv_to_rgb(hsv)[:, :, 0, 0], ref[i[:, 0, 0], torch.arange(4)], atol=1e-9)


def test_blur_kernels():
    k1 = disk_kernel(0.3, 0.4)  # radius < 1: the disk is one pixel, so the kernel is the 3x3 Gaussian
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / (2 * 0.4**2))
    g = g / g.sum()
    assert torch.allclose(k1, torch.outer(g, g))
    k5 = disk_kernel(1.5, 0.1)
    assert k5.shape == (5, 5) and torch.allclose(k5.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(k5, k5.T) and torch.allclose(k5, k5.flip(0))
    assert torch.allclose(zoom_matrix(32, 1.0), torch.eye(32, dtype=torch.float64))
    z = zoom_matrix(32, 1.25)
    assert torch.allclose(z.sum(1), torch.ones(32, dtype=torch.float64)) and z[16].argmax() == 16  # centre fixed
    offs = motion_offsets(6, torch.tensor([0.0, 90.0]))
    assert offs.shape == (2, 13, 2)
    assert offs[0, :, 1].tolist() == list(range(13)) and offs[0, :, 0].abs().sum() == 0
    assert offs[1, :, 0].tolist() == list(range(13))


def test_plasma_fractal_range_and_seed():
    a = plasma_fractal(3, 32, 2.0, torch.Generator().manual_seed(0))
    b = plasma_fractal(3, 32, 2.0, torch.Generator().manual_seed(0))
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    assert torch.allclose(a.amin(dim=(1, 2)), torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(a.amax(dim=(1, 2)), torch.ones(3, dtype=torch.float64))
    assert not torch.equal(a[0], a[1])


def test_dense_path_equals_direct_path():
    x = make_synthetic(64, "test").images  # 64 images: the cached dense operator is used
    xf = x.float() / 255
    direct = (_zoom_mean(xf, 5).clamp(0, 1) * 255).to(torch.uint8)
    assert (corrupt(x, "zoom_blur", 5).int() - direct.int()).abs().max() <= 1  # float32 rounding at the truncation
    direct = (_depthwise(xf, disk_kernel(1.5, 0.1)).clamp(0, 1) * 255).to(torch.uint8)
    assert (corrupt(x, "defocus_blur", 5).int() - direct.int()).abs().max() <= 1


def _corr_with_clean(out: torch.Tensor, clean: torch.Tensor) -> float:
    a, b = out.float().flatten(1), clean.float().flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean().item()


def test_frost_blends_generated_textures(images):
    from ensemblekit.data.corruptions.frost import frost_textures

    tex = frost_textures(3, 64, torch.Generator().manual_seed(0))
    assert tex.shape == (3, 3, 64, 64) and tex.dtype == torch.float32
    assert torch.equal(tex, frost_textures(3, 64, torch.Generator().manual_seed(0)))
    assert not torch.equal(tex, frost_textures(3, 64, torch.Generator().manual_seed(1)))
    assert 0.0 <= tex.min() and tex.max() <= 1.0 and 0.2 < tex.mean() < 0.8
    assert (tex[:, 2] >= tex[:, 0]).all()  # blue-white ice
    outs = [corrupt(images, "frost", s, seed=3) for s in range(1, 6)]
    for out in outs[:2]:  # image weight 1: frost only adds light (b F >= 0)
        assert (out.int() >= images.int()).all()
    # the same seed crops the same frost at every severity, so the image's share a / b decides: 5, 3.3, 2.25, 2.1, 1.7
    corr = [_corr_with_clean(out, images) for out in outs]
    assert all(b < a for a, b in itertools.pairwise(corr)), corr


def test_snow_and_spatter_structure(images):
    for s in range(1, 6):  # snow whitens and adds flakes: never darker (one level of float rounding aside)
        assert (corrupt(images, "snow", s, seed=0).int() >= images.int() - 1).all()
    water = [_distance(corrupt(images, "spatter", s, seed=0), images) for s in (1, 2, 3)]
    mud = [_distance(corrupt(images, "spatter", s, seed=0), images) for s in (4, 5)]
    assert water[0] < water[1] < water[2] and mud[0] < mud[1], (water, mud)
    for s in (1, 2, 3):  # water adds pale turquoise
        assert (corrupt(images, "spatter", s, seed=0).int() >= images.int()).all()
    out = corrupt(images, "spatter", 5, seed=0).int()
    changed = (out != images.int()).any(1)
    assert changed.any() and (out[:, 0][changed] >= out[:, 2][changed]).float().mean() > 0.9  # brown: R >= B


def test_canny_matches_opencv_semantics():
    from ensemblekit.data.corruptions.spatter import canny

    step = torch.zeros(1, 1, 12, 12)
    step[..., 6:] = 200.0  # |gx| = 800 on columns 5 and 6; suppression keeps the first (m > left, m >= right)
    edges = canny(step)
    assert edges[0, 0, :, 5].sum() == 12 and edges.sum() == 12
    weak = step * 30 / 200  # magnitude 120: above 50, below 150, never connected to a strong pixel
    assert canny(weak).sum() == 0
    mixed = step.clone()
    mixed[..., 6:, 6:] = 30.0  # the lower half of the edge is weak but 8-connected to the strong upper half
    assert canny(mixed)[0, 0, 8:, 5].all() and canny(mixed)[0, 0, :4, 5].all()


def test_chamfer_distance_equals_the_5x5_metric():
    from ensemblekit.data.corruptions.spatter import CHAMFER, chamfer_distance

    a, b, c = CHAMFER
    zero = torch.zeros(1, 1, 24, 24, dtype=torch.bool)
    points = [(3, 4), (17, 20)]
    for r, q in points:
        zero[0, 0, r, q] = True
    rows, cols = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    ref = torch.full((24, 24), float("inf"), dtype=torch.float64)
    for r, q in points:  # u >= 2v: v knight's moves + (u - 2v) axial; else (u - v) knight's + (2v - u) diagonal
        dy, dx = (rows - r).abs().double(), (cols - q).abs().double()
        u, v = torch.maximum(dy, dx), torch.minimum(dy, dx)
        d = torch.where(u >= 2 * v, v * c + (u - 2 * v) * a, (u - v) * c + (2 * v - u) * b)
        ref = torch.minimum(ref, d)
    assert torch.allclose(chamfer_distance(zero)[0, 0].double(), ref.clamp(max=20.0), atol=1e-5)
    assert torch.equal(chamfer_distance(torch.zeros(1, 1, 5, 5, dtype=torch.bool)), torch.full((1, 1, 5, 5), 20.0))


def test_equalize_hist_lut():
    from ensemblekit.data.corruptions.spatter import equalize_hist

    x = torch.full((2, 1, 4, 4), 10.0)
    x[0, 0, 2] = 20.0
    x[0, 0, 3] = 30.0  # levels 10, 20, 30 with counts 8, 4, 4: lut 0, round(4·255/8) = 128 (half to even), 255
    out = equalize_hist(x)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 2, 0] == 128 and out[0, 0, 3, 0] == 255
    assert torch.equal(out[1], x[1])  # one level: unchanged
