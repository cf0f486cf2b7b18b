"""Every stage of every method's recipe runs its schedule's whole course (issue 12, item 1).

Milestones and warm-up are given in epochs of the ``train`` course; a stage shorter or longer than the course (a
MotherNets member, an FGE pre-training, a distillation teacher) runs the course scaled onto its own epochs.
"""

from __future__ import annotations

import typing
import warnings

import pytest
import torch

from ensemblekit.config import TrainConfig
from ensemblekit.methods import METHODS, build_method
from ensemblekit.resolve import config_from_dict
from ensemblekit.training.optim import build_optimizer, build_scheduler, lr_factor
from ensemblekit.training.stage import ScheduleSpec, Stage
from tests.conftest import tiny_config

SCHEDULES = list(typing.get_args(TrainConfig.model_fields["schedule"].annotation))
STEPS_PER_EPOCH = 100
EPOCHS = 50
ARCHS = [{"name": "resnet8", "width": 0.25}, {"name": "resnet8", "width": 0.5}]
OPTIONS = {  # options that give every method stages of different lengths, each of at least 10 epochs
    "mothernets": {"architectures": ARCHS},  # MotherNet 40 epochs, members 10
    "distillation": {"architectures": ARCHS, "teacher_epochs": 20},
    "fge": {"members": 2, "pretrain_epochs": 20},
    "subnetwork": {"members": 2, "child_epochs": 10},
    "snapshot": {"members": 2, "cycle_epochs": 10},
    "bagging": {"members": 2},
    "deep_ensemble": {"members": 2},
}


def final_factor(spec: ScheduleSpec, base_lr: float) -> float:
    """The multiplier of the base learning rate at the end of a schedule's course (closed forms)."""
    return {
        "constant": 1.0,
        "step": spec.gamma ** len(spec.milestones),
        "cosine": spec.min_lr / base_lr,
        "onecycle": 1.0 / (spec.div_factor * spec.final_div_factor),
        "cyclic_cosine": 0.0,  # the end of the last cycle
        "flat_linear": spec.final_ratio,
        "linear_cyclic": 1.0,  # FGE: alpha_1 -> alpha_2 -> alpha_1 in every cycle
    }[spec.name]


def lr_at_last_step(stage: Stage) -> float:
    """The learning rate of the stage's last optimiser step, from the engine's own scheduler."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([{"params": [p]}], stage.optim)
    sched = build_scheduler(opt, stage.schedule, STEPS_PER_EPOCH, stage.epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping the scheduler without optimiser steps
        sched.last_epoch = STEPS_PER_EPOCH * stage.epochs - 2
        sched.step()
    return opt.param_groups[0]["lr"]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_every_stage_ends_its_schedule_at_the_final_value(method, schedule):
    train = {"epochs": EPOCHS, "schedule": schedule, "lr": 0.1, "min_lr": 0.001, "cycles": 2}
    if schedule == "step":
        train.update(milestones=[15, 30, 45], gamma=0.2)
    if schedule != "onecycle":
        train["warmup_epochs"] = 5
    cfg = config_from_dict(tiny_config(method={"name": method, **OPTIONS.get(method, {})}, train=train))
    m = build_method(cfg, num_classes=10, train_size=192)
    torch.manual_seed(0)
    stages = [s for s in m.recipe(m.build()) if s.epochs > 0]
    assert stages
    for stage in stages:
        got = lr_at_last_step(stage) / stage.optim.lr
        assert got == pytest.approx(final_factor(stage.schedule, stage.optim.lr), abs=1e-4), (stage.name, got)


def test_mothernets_member_stage_decays_at_the_scaled_milestones():
    """The issue's case: a 40-epoch stage of a 200-epoch course with milestones [60, 120, 160] decays at 12/24/32."""
    spec = ScheduleSpec("step", milestones=[60, 120, 160], gamma=0.2, course_epochs=200)
    spe = 7
    factors = [lr_factor(spec, t, spe, 40, 0.1) for t in range(40 * spe)]
    changes = [t for t in range(1, len(factors)) if factors[t] != factors[t - 1]]
    assert changes == [12 * spe, 24 * spe, 32 * spe]
    assert factors[-1] == pytest.approx(0.2**3)
    own = ScheduleSpec("step", milestones=[60, 120, 160], gamma=0.2, course_epochs=200)  # the course itself
    assert [t for t in range(1, 200) if lr_factor(own, t, 1, 200, 0.1) != lr_factor(own, t - 1, 1, 200, 0.1)] == [
        60,
        120,
        160,
    ]


def test_warmup_scales_with_the_stage_and_unscaled_specs_are_unchanged():
    scaled = ScheduleSpec("constant", warmup_epochs=5, course_epochs=50)
    assert [lr_factor(scaled, t, 4, 10, 0.1) for t in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    plain = ScheduleSpec("constant", warmup_epochs=1)  # course_epochs None: epochs of the stage itself
    assert [lr_factor(plain, t, 4, 10, 0.1) for t in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
