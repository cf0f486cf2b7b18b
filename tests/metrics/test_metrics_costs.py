"""count_parameters, inference_flops and flops_ratio."""

import pytest
import torch
from torch import nn

from ensemblekit.ensemble import Ensemble, MemberEnsemble
from ensemblekit.metrics import count_parameters, flops_ratio, inference_flops

LINEAR = 10 * 5 + 5  # nn.Linear(10, 5)


def test_plain_module_counts():
    assert count_parameters(nn.Linear(10, 5)) == {"params": LINEAR, "unique_params": LINEAR, "trainable_params": LINEAR}


def test_shared_linear_counts_per_member_but_once_unique():
    shared = nn.Linear(10, 5)
    counts = count_parameters(MemberEnsemble([shared, shared]))
    assert counts == {"params": 2 * LINEAR, "unique_params": LINEAR, "trainable_params": LINEAR}


def test_partly_shared_members():
    trunk = nn.Linear(10, 5)
    members = [nn.Sequential(trunk, nn.Linear(5, 3)) for _ in range(3)]
    counts = count_parameters(MemberEnsemble(members))
    head = 5 * 3 + 3
    assert counts["params"] == 3 * (LINEAR + head)
    assert counts["unique_params"] == LINEAR + 3 * head


def test_frozen_parts_are_not_trainable():
    a, b = nn.Linear(10, 5), nn.Linear(10, 5)
    b.weight.requires_grad_(False)
    counts = count_parameters(MemberEnsemble([a, b]))
    assert counts == {"params": 2 * LINEAR, "unique_params": 2 * LINEAR, "trainable_params": 2 * LINEAR - 50}


def test_meta_device():
    with torch.device("meta"):
        shared = nn.Linear(10, 5)
        ensemble = MemberEnsemble([shared, shared, nn.Linear(10, 5)])
    assert ensemble.members[0].weight.is_meta
    counts = count_parameters(ensemble)
    assert counts == {"params": 3 * LINEAR, "unique_params": 2 * LINEAR, "trainable_params": 2 * LINEAR}


def test_tied_storage_counted_once():
    a, b = nn.Linear(10, 5, bias=False), nn.Linear(10, 5, bias=False)
    b.weight = nn.Parameter(a.weight.data)  # a different Parameter object over the same storage
    assert b.weight is not a.weight
    module = nn.ModuleList([a, b])
    assert count_parameters(module)["unique_params"] == 50
    # a different view of the same storage is a different tensor
    b.weight = nn.Parameter(a.weight.data.t())
    assert count_parameters(module)["unique_params"] == 100


class _Packed(Ensemble):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(4, 3))

    @property
    def num_members(self) -> int:
        return 4

    def total_parameter_count(self) -> int:
        return 123


class _WithStem(MemberEnsemble):
    def __init__(self) -> None:
        super().__init__([nn.Linear(10, 5), nn.Linear(10, 5)])
        self.stem = nn.Linear(10, 10)


def test_total_parameter_count_and_members_outside_parameters():
    assert count_parameters(_Packed()) == {"params": 123, "unique_params": 12, "trainable_params": 12}
    # a stem outside every member counts once in params
    assert count_parameters(_WithStem())["params"] == 2 * LINEAR + 110
    assert count_parameters(_WithStem())["unique_params"] == 2 * LINEAR + 110


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


CNN_FLOPS = 2 * 3 * 8 * 9 * 32 * 32 + 2 * 8 * 10  # conv + linear multiply-adds; bias/BN/ReLU/pool not counted


def test_linear_flops_exact():
    # FlopCounterMode counts 2 FLOPs per multiply-add and does not count the bias addition
    assert inference_flops(nn.Linear(100, 10), input_shape=(1, 100)) == 2 * 100 * 10
    assert inference_flops(nn.Linear(100, 10), input_shape=(8, 100)) == 2 * 100 * 10


def test_conv_flops_exact():
    conv = nn.Conv2d(3, 16, 3, padding=1)
    assert inference_flops(conv) == 2 * 3 * 16 * 9 * 32 * 32
    strided = nn.Conv2d(3, 16, 3, stride=2, padding=1)  # 16x16 output
    assert inference_flops(strided, input_shape=(2, 3, 32, 32)) == 2 * 3 * 16 * 9 * 16 * 16
    assert inference_flops(_cnn()) == CNN_FLOPS


def test_member_ensemble_flops_is_members_times_one():
    ensemble = MemberEnsemble([_cnn() for _ in range(3)])
    single = inference_flops(_cnn())
    assert inference_flops(ensemble) == 3 * single == 3 * CNN_FLOPS
    assert flops_ratio(inference_flops(ensemble), single) == 3.0


def test_flops_on_meta_device_and_modes_restored():
    with torch.device("meta"):
        model = _cnn()
    model.train()
    model[1].eval()  # a frozen BN inside a training model keeps its own mode
    assert inference_flops(model) == CNN_FLOPS
    assert model.training and model[0].training and not model[1].training


def test_flops_errors():
    with pytest.raises(ValueError, match="batch"):
        inference_flops(nn.Linear(3, 3), input_shape=())
    with pytest.raises(ValueError, match="batch"):
        inference_flops(nn.Linear(3, 3), input_shape=(0, 3))
    with pytest.raises(ValueError, match="single_flops"):
        flops_ratio(10, 0)


class _StoresMore(nn.Module):
    """An ensemble that stores a parent it never runs at inference (as a subnetwork ensemble does)."""

    def __init__(self) -> None:
        super().__init__()
        self.parent = nn.Linear(10, 5)
        self.children_ = nn.ModuleList([nn.Linear(10, 5), nn.Linear(10, 5)])
        self.unselected = nn.Linear(10, 5)

    def forward(self, x):
        return torch.stack([child(x) for child in self.children_])


def test_inference_parameter_count_leaves_out_stored_networks_inference_never_runs():
    from ensemblekit.metrics.costs import inference_parameter_count

    model = _StoresMore()
    model.parent.requires_grad_(False)
    model.train()
    assert count_parameters(model)["unique_params"] == 4 * LINEAR
    assert inference_parameter_count(model, (1, 10)) == 2 * LINEAR
    assert model.training and not model.parent.weight.requires_grad  # nothing changed
    assert all(p.grad is None for p in model.parameters())
    shared = nn.Linear(10, 5)
    assert inference_parameter_count(MemberEnsemble([shared, shared]), (1, 10)) == LINEAR  # counted once
    with torch.device("meta"):
        meta = _StoresMore()
    assert inference_parameter_count(meta, (1, 10)) == 2 * LINEAR


def test_subnetwork_runs_report_the_parameters_their_children_use():
    from ensemblekit.resolve import config_from_dict
    from ensemblekit.runs import build_ensemble, describe_costs
    from tests.conftest import tiny_config

    raw = tiny_config(method={"name": "subnetwork", "members": 2, "candidates": 4}, data={"val_size": 32})
    cfg = config_from_dict(raw)
    method, ensemble = build_ensemble(cfg, 10, 192)
    costs = describe_costs(method, ensemble)
    single = costs["single_params"]
    assert costs["unique_params"] == 5 * single  # the parent and four candidates are stored
    assert costs["inference_params"] == 2 * single  # the two selected children run
