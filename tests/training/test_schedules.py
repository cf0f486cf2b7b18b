import itertools
import math

import pytest
import torch

from ensemblekit.training.optim import build_optimizer, build_scheduler, default_param_groups, lr_factor
from ensemblekit.training.stage import OptimSpec, ScheduleSpec


def lrs(spec: ScheduleSpec, steps_per_epoch: int, epochs: int, lr: float = 0.1, optim: str = "sgd") -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([{"params": [p]}], OptimSpec(name=optim, lr=lr))
    sched = build_scheduler(opt, spec, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_starts_at_lr_and_ends_near_min():
    values = lrs(ScheduleSpec("cosine", min_lr=0.001), 10, 10)
    assert values[0] == pytest.approx(0.1)
    assert values[50] == pytest.approx(0.001 + 0.099 * 0.5)
    assert values[-1] == pytest.approx(0.001, abs=1e-4)
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_step_schedule_decays_at_milestones():
    values = lrs(ScheduleSpec("step", milestones=[2, 4], gamma=0.2), 5, 6)
    assert values[9] == pytest.approx(0.1) and values[10] == pytest.approx(0.02) and values[20] == pytest.approx(0.004)


def test_warmup_is_linear_then_schedule():
    values = lrs(ScheduleSpec("constant", warmup_epochs=1), 4, 3)
    assert values[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert values[4:] == pytest.approx([0.1] * 8)


def test_flat_linear_matches_the_swa_schedule_per_epoch():
    epochs = 10
    values = lrs(ScheduleSpec("flat_linear", final_ratio=0.01), 1, epochs)
    for e, v in enumerate(values):
        a = e / epochs
        expected = 0.1 if a <= 0.5 else (0.1 * (1 - 0.99 * (a - 0.5) / 0.4) if a <= 0.9 else 0.001)
        assert v == pytest.approx(expected)


def test_cyclic_cosine_restarts_every_cycle():
    values = lrs(ScheduleSpec("cyclic_cosine", cycles=4), 5, 8)  # 40 steps, cycles of 10
    for start in (0, 10, 20, 30):
        assert values[start] == pytest.approx(0.1)
        assert values[start + 5] == pytest.approx(0.05)
        assert values[start + 9] < 0.003


def test_onecycle_values_at_start_warmup_end_and_last_step():
    steps = 100
    values = lrs(ScheduleSpec("onecycle", pct_start=0.1, div_factor=100, final_div_factor=1e4), steps, 1)
    assert values[0] == pytest.approx(1e-3)
    peak = max(range(steps), key=lambda i: values[i])
    assert abs(peak - 10) <= 1 and values[peak] == pytest.approx(0.1, rel=0.02)
    assert values[-1] < 2e-5


def test_lr_factor_of_cosine_formula():
    spec = ScheduleSpec("cosine")
    assert lr_factor(spec, 25, 10, 10, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_bn_and_bias_can_be_excluded_from_weight_decay():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    groups = default_param_groups(net, OptimSpec(decay_bn_and_bias=False))
    opt = build_optimizer(groups, OptimSpec(weight_decay=5e-4, decay_bn_and_bias=False))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(net[0].weight), id(net[2].weight)}


def test_decay_exclusion_is_by_role_not_by_dimension():
    """A 1-D weight (no ``bias`` name, not in a norm layer) is decayed; a 2-D norm parameter is not."""
    from ensemblekit.layers.batch_ensemble import EnsembleBatchNorm2d

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=True), torch.nn.GroupNorm(2, 4), EnsembleBatchNorm2d(2, 4))
    net.register_parameter("flat", torch.nn.Parameter(torch.zeros(7)))
    opt = build_optimizer(
        default_param_groups(net, OptimSpec(decay_bn_and_bias=False)),
        OptimSpec(weight_decay=5e-4, decay_bn_and_bias=False),
    )
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(net.flat), id(net[0].weight)}


def test_conv_net_decays_exactly_its_conv_and_linear_weights_when_bn_and_bias_are_excluded():
    from ensemblekit.models import create_model

    net = create_model("resnet20", num_classes=10, width=0.25)
    groups = default_param_groups(net, OptimSpec(decay_bn_and_bias=False))
    opt = build_optimizer(groups, OptimSpec(weight_decay=5e-4, decay_bn_and_bias=False))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    weights = {id(m.weight) for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)}
    assert decayed == weights and len(weights) > 20


def test_lr_multiplier_groups():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([{"params": [a]}, {"params": [b], "lr_mult": 0.5}], OptimSpec(lr=0.2))
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.1]
