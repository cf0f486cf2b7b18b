"""Image folders: class order, exact PNG pixels, size checks, the decode cache and its invalidation."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from ensemblekit.data import image_folder, load_data
from ensemblekit.data.cache import DecodeCache
from ensemblekit.data.stats import channel_stats
from ensemblekit.errors import UserError


@pytest.fixture
def folder(tmp_path, make_png_folder):
    root = tmp_path / "shapes"
    expected = make_png_folder(root, ["zebra", "apple", "mango"])
    return root, expected


def test_classes_sorted_and_pixels_exact(folder):
    root, expected = folder
    bundle = load_data("image_folder", root=root)
    assert bundle.classes == ["apple", "mango", "zebra"] and bundle.num_classes == 3
    for split in ("train", "test"):
        tensors = getattr(bundle, split)
        assert tensors.images.dtype.is_floating_point is False and tensors.images.shape[1:] == (3, 8, 6)
        np.testing.assert_array_equal(tensors.images.numpy(), expected[split][0])
        np.testing.assert_array_equal(tensors.labels.numpy(), expected[split][1])
    assert bundle.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    mean, std = channel_stats(bundle.train.images)
    assert bundle.mean == mean and bundle.std == std  # other folders: statistics of the training images
    assert bundle.source == f"image folder {root}"


def test_channel_stats_match_float_computation(folder):
    root, expected = folder
    images = expected["train"][0].astype(np.float64) / 255
    mean, std = channel_stats(load_data("image_folder", root=root).train.images)
    np.testing.assert_allclose(mean, images.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, images.std(axis=(0, 2, 3)), rtol=1e-9)


def test_grayscale_and_jpeg_files_decode_to_rgb(tmp_path):
    root = tmp_path / "mixed"
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        Image.fromarray(np.full((4, 4), 77, np.uint8), mode="L").save(root / split / "a" / "0.png")
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / split / "a" / "1.JPG")
        (root / split / "a" / "notes.txt").write_text("ignored")
    bundle = load_data("image_folder", root=root)
    assert bundle.train.images.shape == (2, 3, 4, 4)
    assert (bundle.train.images[0] == 77).all()


def test_images_of_different_sizes_are_refused(folder):
    root, _ = folder
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "train" / "apple" / "odd.png")
    with pytest.raises(UserError, match=r"odd\.png is 5x5 .* same size"):
        load_data("image_folder", root=root)


def test_missing_split_and_unknown_test_class(tmp_path, make_png_folder):
    make_png_folder(tmp_path / "only", ["a"], {"train": 1})
    with pytest.raises(UserError, match="test is missing"):
        load_data("image_folder", root=tmp_path / "only")
    make_png_folder(tmp_path / "extra", ["a"], {"train": 1, "test": 1})
    (tmp_path / "extra" / "test" / "b").mkdir()
    with pytest.raises(UserError, match="classes that train/ lacks: b"):
        load_data("image_folder", root=tmp_path / "extra")
    with pytest.raises(UserError, match="needs root"):
        load_data("image_folder")


def _counting_decoder(monkeypatch):
    calls = []
    real = image_folder.decode_images

    def counting(paths):
        calls.append(len(paths))
        return real(paths)

    monkeypatch.setattr(image_folder, "decode_images", counting)
    return calls


def test_second_load_comes_from_cache_without_decoding(folder, tmp_path, monkeypatch, caplog):
    root, expected = folder
    cache = tmp_path / "my-cache"
    caplog.set_level("INFO", logger="ensemblekit.data.image_folder")
    first = load_data("image_folder", root=root, cache_dir=cache)
    assert "decoding 15 images" in caplog.text
    assert len(list((cache / "decoded").glob("*/meta.json"))) == 1

    def refuse(paths):
        raise AssertionError("decoded again")

    monkeypatch.setattr(image_folder, "decode_images", refuse)
    second = load_data("image_folder", root=root, cache_dir=cache)
    assert second.source == first.source == f"image folder {root}"
    assert "from the decode cache" in caplog.text
    np.testing.assert_array_equal(second.train.images.numpy(), expected["train"][0])
    np.testing.assert_array_equal(second.test.labels.numpy(), expected["test"][1])


def test_cache_dir_defaults_to_env(folder, tmp_path):
    root, _ = folder
    load_data("image_folder", root=root)
    assert list((tmp_path / "cache" / "decoded").glob("shapes-*/train_images.npy"))


@pytest.mark.parametrize("change", ["add", "remove", "rewrite"])
def test_changed_folder_invalidates_cache(folder, tmp_path, monkeypatch, change):
    root, _ = folder
    cache = tmp_path / "c"
    load_data("image_folder", root=root, cache_dir=cache)
    calls = _counting_decoder(monkeypatch)
    load_data("image_folder", root=root, cache_dir=cache)
    assert calls == []
    target = root / "train" / "mango" / "0001.png"
    if change == "add":
        Image.fromarray(np.full((8, 6, 3), 9, np.uint8)).save(root / "train" / "mango" / "0009.png")
    elif change == "remove":
        target.unlink()
    else:
        Image.fromarray(np.full((8, 6, 3), 200, np.uint8)).save(target)
        stat = target.stat()
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    bundle = load_data("image_folder", root=root, cache_dir=cache)
    assert calls == [9 + {"add": 1, "remove": -1, "rewrite": 0}[change] + 6]  # train and test in one pass
    assert len(bundle.train) == 9 + {"add": 1, "remove": -1, "rewrite": 0}[change]
    if change == "rewrite":
        assert (bundle.train.images[4] == 200).all()
    assert len(list((cache / "decoded").glob("*/meta.json"))) == 1  # the stale entry was removed


def test_corrupt_cache_entry_is_rebuilt(folder, tmp_path):
    root, expected = folder
    cache = tmp_path / "c"
    load_data("image_folder", root=root, cache_dir=cache)
    (entry,) = (cache / "decoded").glob("*/train_images.npy")
    entry.write_bytes(b"garbage")
    bundle = load_data("image_folder", root=root, cache_dir=cache)
    np.testing.assert_array_equal(bundle.train.images.numpy(), expected["train"][0])
    assert DecodeCache(cache).load(root, image_folder.scan_image_folder(root).fingerprint) is not None


def test_process_pool_decodes_the_same(tmp_path, make_png_folder, monkeypatch):
    expected = make_png_folder(tmp_path / "pool", ["a", "b"], {"train": 12, "test": 1})
    paths = image_folder.scan_image_folder(tmp_path / "pool").files["train"]
    monkeypatch.setattr(image_folder, "POOL_MIN_IMAGES", 4)
    monkeypatch.setattr(image_folder, "_workers", lambda: 2)
    np.testing.assert_array_equal(image_folder.decode_images(paths), expected["train"][0])


def test_undecodable_file_is_named(folder):
    root, _ = folder
    (root / "test" / "zebra" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"cannot decode image .*broken\.png"):
        load_data("image_folder", root=root)


def test_size_mismatch_across_pool_chunks_names_a_file(tmp_path, make_png_folder, monkeypatch):
    make_png_folder(tmp_path / "pool", ["a"], {"train": 8, "test": 1})
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "pool" / "test" / "a" / "0000.png")
    monkeypatch.setattr(image_folder, "POOL_MIN_IMAGES", 4)
    monkeypatch.setattr(image_folder, "_workers", lambda: 2)
    with pytest.raises(UserError, match=r"test/a/0000\.png is 5x5 but .*train/a/0000\.png is 6x8"):
        load_data("image_folder", root=tmp_path / "pool")


def test_folder_named_cifar10_uses_cifar10_statistics(tmp_path, make_png_folder):
    make_png_folder(tmp_path / "cifar10-small", ["a", "b"], {"train": 2, "test": 1})
    bundle = load_data("image_folder", root=tmp_path / "cifar10-small")
    assert bundle.mean == (0.4914, 0.4822, 0.4465) and bundle.std == (0.2471, 0.2435, 0.2616)
