"""Class-balanced scoring batches for GraSP (Wang, Zhang & Grosse, ICLR 2020)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ensemblekit.errors import UserError
from ensemblekit.pruning.score_data import class_balanced_indices
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import build_ensemble
from tests.conftest import tiny_config

IMBALANCED = torch.cat([torch.zeros(200, dtype=torch.long), torch.arange(1, 10).repeat_interleave(12)])


def test_class_balanced_indices_take_equal_counts_of_every_class():
    rows = class_balanced_indices(IMBALANCED, 10, torch.Generator().manual_seed(0))
    assert len(rows) == 100 and len(set(rows.tolist())) == 100  # distinct rows
    assert torch.bincount(IMBALANCED[rows], minlength=10).tolist() == [10] * 10
    assert IMBALANCED[rows[:50]].unique().numel() > 1  # shuffled: the first half is not one class
    assert torch.equal(rows, class_balanced_indices(IMBALANCED, 10, torch.Generator().manual_seed(0)))
    assert not torch.equal(rows, class_balanced_indices(IMBALANCED, 10, torch.Generator().manual_seed(1)))
    with pytest.raises(UserError, match="class 1 has 12 training examples, fewer than 13"):
        class_balanced_indices(IMBALANCED, 13, torch.Generator())


class _Engine:
    """Records what the fission prune hook asks for; serves the requested rows' labels."""

    def __init__(self, labels):
        self.data = SimpleNamespace(train=SimpleNamespace(labels=labels))
        self.calls = []

    def sample_batches(self, num_batches, seed, *, batch_size=None, augment=None, indices=None):
        self.calls.append({"num": num_batches, "seed": seed, "batch_size": batch_size, "indices": indices})
        rows = torch.arange(batch_size) if indices is None else indices
        return [(torch.zeros(len(rows), 3, 8, 8), self.data.train.labels[rows])] * num_batches


def _fission(**options):
    cfg = config_from_dict(tiny_config(method={"name": "fission", **options}, model={"name": "resnet8", "width": 0.5}))
    return build_ensemble(cfg, 10, 192)[0]


def test_grasp_scores_on_class_balanced_batches_and_snip_on_plain_ones():
    engine = _Engine(IMBALANCED)
    batches = _fission(criterion="grasp", score_batches=2, grasp_samples_per_class=4).score_data(
        engine.sample_batches, engine.data.train.labels
    )
    assert len(batches) == 2
    for _, labels in batches:
        assert torch.bincount(labels, minlength=10).tolist() == [4] * 10
    assert not torch.equal(engine.calls[0]["indices"], engine.calls[1]["indices"])  # one fresh draw per batch
    engine = _Engine(IMBALANCED)
    snip = _fission(criterion="snip", score_batches=1, score_batch_size=64).score_data(
        engine.sample_batches, engine.data.train.labels
    )
    assert engine.calls == [{"num": 1, "seed": engine.calls[0]["seed"], "batch_size": 64, "indices": None}]
    assert len(snip[0][1]) == 64
