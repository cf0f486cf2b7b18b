"""data.classes: a subset of classes with labels remapped to 0..k-1 (held-out-classes protocol)."""

from __future__ import annotations

import pytest
import torch

from ensemblekit.data import load_data
from ensemblekit.data.classes import complement, select_classes
from ensemblekit.data.synthetic import make_synthetic
from ensemblekit.errors import UserError
from ensemblekit.resolve import load_config


def test_select_classes_remaps_in_given_order():
    split = make_synthetic(40, "test")
    sub = select_classes(split, [7, 2])
    assert sub.labels.tolist() == [1, 0] * 4  # labels cycle 0..9: rows 2, 7, 12, 17, ...
    assert sub.classes == [split.classes[7], split.classes[2]]
    keep = (split.labels == 7) | (split.labels == 2)
    assert torch.equal(sub.images, split.images[keep])
    assert complement([7, 2], 10) == [0, 1, 3, 4, 5, 6, 8, 9]


def test_load_data_with_classes():
    b = load_data("synthetic", train_size=60, test_size=30, val_size=12, classes=[0, 1, 2, 3, 4, 5])
    assert b.num_classes == 6 and len(b.classes) == 6
    for split, n in ((b.train, 60), (b.val, 12), (b.test, 30)):
        assert len(split) == n and set(split.labels.tolist()) == set(range(6))
    rest = load_data("synthetic", test_size=20, classes=[6, 7, 8, 9]).test
    assert set(rest.labels.tolist()) == {0, 1, 2, 3} and rest.classes == [
        "pattern_6",
        "pattern_7",
        "pattern_8",
        "pattern_9",
    ]


@pytest.mark.parametrize(("classes", "match"), [([10], "not a class"), ([1, 1], "repeated"), ([], "at least one")])
def test_bad_classes(classes, match):
    with pytest.raises(UserError, match=match):
        load_data("synthetic", train_size=20, test_size=10, classes=classes)


def test_config_field():
    cfg = load_config(None, ["data.classes=[0,1,2]"])
    assert cfg.data.classes == [0, 1, 2]
    with pytest.raises(UserError, match=r"data\.classes"):
        load_config(None, ["data.classes=[]"])
