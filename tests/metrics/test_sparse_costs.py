"""The shared sparse-cost schema against hand counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ensemblekit.metrics import count_parameters, inference_flops
from ensemblekit.metrics.sparse_costs import (
    SPARSE_MODEL_KEYS,
    masked_out,
    skipped_flops,
    sparse_epoch_equivalents,
    sparse_model_costs,
)
from ensemblekit.pruning import add_masks, set_masks

SHAPE = (1, 3, 8, 8)


def _net(zeros: int) -> nn.Module:
    """Conv 3->4 (3x3, 108 weights, 8x8 output) + linear 256->10; the first ``zeros`` conv weights masked."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    add_masks(net)  # the classifier is never masked
    mask = torch.ones(108)
    mask[:zeros] = 0
    set_masks(net, {"0": mask.view(4, 3, 3, 3)})
    return net


def test_sparse_model_costs_equal_hand_counts():
    a, b = _net(81), _net(54)
    dense = inference_flops(a, SHAPE)
    assert dense == 2 * 108 * 64 + 2 * 256 * 10  # = 18944, 2 FLOPs per multiply-add
    assert skipped_flops(a, SHAPE) == 2 * 81 * 64 and masked_out(b) == 54
    params = count_parameters(a)["params"] + count_parameters(b)["params"]
    costs = {"inference_flops": 2 * dense, "single_inference_flops": dense, "params": params}
    out = sparse_model_costs([a, b], costs, SHAPE)
    assert set(out) == set(SPARSE_MODEL_KEYS)
    sparse = 2 * dense - 2 * (81 + 54) * 64
    assert out["inference_flops_sparse"] == sparse and out["inference_flops_sparse_vs_single"] == pytest.approx(
        sparse / dense
    )
    assert params == 2 * (108 + 2560 + 10) and out["params_nonzero"] == params - 81 - 54


def test_sparse_epoch_equivalents_scale_each_stage_by_its_fraction():
    stages = {"prune": {"train_epoch_equivalents": 0.5}, "train": {"train_epoch_equivalents": 4.0}}
    assert sparse_epoch_equivalents(stages, {"train": 0.25}) == pytest.approx(0.5 + 1.0)
    assert sparse_epoch_equivalents(stages, {}) == pytest.approx(4.5)  # dense stages count in full
