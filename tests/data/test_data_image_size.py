"""``data.image_size``: image folders with images of any size are resized to cover and centre-cropped."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ensemblekit.data import load_data
from ensemblekit.data.images import resize_and_crop
from ensemblekit.errors import UserError
from ensemblekit.resolve import config_from_dict


def _mixed_folder(root):
    rng = np.random.default_rng(3)
    sizes = [(20, 30), (40, 16), (12, 12)]
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for j, (h, w) in enumerate(sizes):
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / cls / f"{j}.png")


def test_mixed_sizes_are_resized_and_cropped(tmp_path):
    _mixed_folder(tmp_path / "mixed")
    with pytest.raises(UserError, match=r"unless data\.image_size is set"):
        load_data("image_folder", root=tmp_path / "mixed", cache_dir=tmp_path / "cache")
    bundle = load_data("image_folder", root=tmp_path / "mixed", cache_dir=tmp_path / "cache", image_size=(16, 24))
    assert bundle.train.images.shape == (6, 3, 16, 24)
    with Image.open(tmp_path / "mixed" / "train" / "a" / "1.png") as image:
        expected = np.asarray(resize_and_crop(image.convert("RGB"), (16, 24))).transpose(2, 0, 1)
    assert np.array_equal(bundle.train.images[1].numpy(), expected)
    again = load_data("image_folder", root=tmp_path / "mixed", cache_dir=tmp_path / "cache", image_size=(8, 8))
    assert again.train.images.shape == (6, 3, 8, 8)  # another size is another cache entry


def test_image_size_config_forms():
    assert config_from_dict({"data": {"image_size": 64}}).data.image_hw() == (64, 64)
    assert config_from_dict({"data": {"image_size": [48, 64]}}).data.image_hw() == (48, 64)
    with pytest.raises(UserError, match=r"data\.image_size"):
        config_from_dict({"data": {"image_size": [1, 2, 3]}})
    with pytest.raises(UserError, match="applies to image_folder"):
        load_data("synthetic", train_size=10, test_size=10, image_size=(8, 8))


def test_augmentation_options_reach_the_loader():
    import torch

    from ensemblekit.data import BatchLoader, normalize
    from ensemblekit.data.augment import augment_batch
    from ensemblekit.data.loader import epoch_seed

    data = load_data("synthetic", train_size=20, test_size=10)
    kw = {"mean": data.mean, "std": data.std, "shuffle": False, "augment": True, "seed": 3}
    off = next(iter(BatchLoader(data.train, 20, crop_padding=0, flip=False, **kw)))[0]
    torch.testing.assert_close(off, normalize(data.train.images, data.mean, data.std))  # nothing left to randomise
    padded = next(iter(BatchLoader(data.train, 20, crop_padding=2, flip=False, **kw)))[0]
    generator = torch.Generator().manual_seed(epoch_seed(3, 0, 1, 0))
    torch.testing.assert_close(padded, augment_batch(data.train.images, data.mean, data.std, generator, 2, False))
    assert not torch.equal(padded, off)
    cfg = config_from_dict({"data": {"crop_padding": 0, "flip": False}})
    assert (cfg.data.crop_padding, cfg.data.flip) == (0, False)
