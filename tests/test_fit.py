"""``ensemblekit.fit``: training from torch Datasets, DataLoaders and tensors (issue 17 item 2)."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import ensemblekit
from ensemblekit.data import load_data
from ensemblekit.errors import UserError
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import train
from ensemblekit.user_data import as_data_bundle
from tests.conftest import tiny_config


def _synthetic():
    return load_data("synthetic", train_size=192, test_size=64)


def _config():
    raw = tiny_config(method={"name": "deep_ensemble", "members": 2}, train={"epochs": 1})
    raw["data"] = {k: v for k, v in raw["data"].items() if k in ("batch_size", "eval_batch_size")}
    return raw


def test_fit_on_tensors_equals_the_same_data_from_a_config(tmp_path):
    data = _synthetic()
    by_fit = ensemblekit.fit(
        _config(),
        train=(data.train.images, data.train.labels),
        test=(data.test.images, data.test.labels),
        classes=data.classes,
        out=tmp_path / "fit",
    )
    by_config = train(
        config_from_dict(tiny_config(method={"name": "deep_ensemble", "members": 2}, train={"epochs": 1})),
        tmp_path / "cfg",
        quiet=True,
    )
    assert by_fit["dataset"] == "memory"
    assert by_fit["metrics"]["nll"] == pytest.approx(by_config["metrics"]["nll"], rel=1e-5)
    assert by_fit["costs"]["train_flops"] == by_config["costs"]["train_flops"]
    predictor = ensemblekit.load(tmp_path / "fit", device="cpu")
    assert predictor.classes == data.classes and predictor.mean == pytest.approx(data.mean)


def test_datasets_loaders_and_float_images_give_the_same_bundle():
    data = _synthetic()
    x, y = data.train.images[:40], data.train.labels[:40]
    floats = TensorDataset(x.float() / 255, y)
    ref = as_data_bundle((x, y), (x, y))
    pils = [(Image.fromarray(x[i].permute(1, 2, 0).numpy()), int(y[i])) for i in range(40)]  # torchvision style
    for source in (floats, DataLoader(floats, batch_size=7), [(x[i], int(y[i])) for i in range(40)], pils):
        bundle = as_data_bundle(source, (x, y))
        assert torch.equal(bundle.train.images, ref.train.images) and torch.equal(bundle.train.labels, y)
    assert ref.classes == [str(k) for k in range(int(y.max()) + 1)]
    assert ref.mean == pytest.approx(data.mean, abs=0.05) and all(math.isfinite(s) for s in ref.std)


def test_bad_user_data_is_refused_in_one_line():
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(UserError, match=r"must lie in \[0, 1\]"):
        as_data_bundle((x * 4 - 2, y), (x, y))
    with pytest.raises(UserError, match="integer class indices"):
        as_data_bundle((x, y.float()), (x, y))
    with pytest.raises(UserError, match="differ in size"):
        as_data_bundle((x, y), (torch.rand(4, 3, 6, 6), y))
    assert as_data_bundle((x, y), (torch.rand(4, 3, 6, 6), y), image_size=(8, 8)).test.images.shape == (4, 3, 8, 8)
    with pytest.raises(UserError, match=r"labels must lie in 0\.\.1"):
        as_data_bundle((x, y), (x, y + 1), classes=["a", "b"])
    with pytest.raises(UserError, match="does not apply to data given from Python"):
        ensemblekit.fit({"data": {"train_size": 10}}, train=(x, y), test=(x, y), out="unused")
    with pytest.raises(UserError, match="given from Python"):
        load_data("memory")
