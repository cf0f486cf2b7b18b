"""``snapshot`` and ``fge``: schedules, collection points (reference runs), costs and option errors."""

from __future__ import annotations

import pytest
import torch

from ensemblekit.errors import UserError
from ensemblekit.methods import build_method
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import train
from ensemblekit.training.optim import lr_factor
from ensemblekit.training.stage import ScheduleSpec
from tests.conftest import tiny_config

STEPS = {"max_steps_per_epoch": 2}


def _run(tmp_path, name, method, **train_over):
    cfg = config_from_dict(tiny_config(method=method, train={**STEPS, **train_over}))
    record = train(cfg, tmp_path / name, quiet=True)
    return record, torch.load(tmp_path / name / "model.pt", weights_only=True)["state_dict"]


def _member(state, i):
    prefix = f"members.{i}."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_linear_cyclic_schedule_values():
    spec = ScheduleSpec(name="linear_cyclic", cycles=2, final_ratio=0.01)
    f = [lr_factor(spec, t, 10, 2, 0.05) for t in range(20)]  # two cycles of L = 10 steps
    assert f[0] == pytest.approx(0.8 + 0.2 * 0.01)  # τ = 0.1
    assert f[4] == pytest.approx(0.01)  # τ = ½: the minimum α₂/α₁
    assert f[9] == pytest.approx(1.0)  # τ = 1: back to α₁
    assert f[10:] == pytest.approx(f[:10])  # the next cycle repeats
    assert min(f) == pytest.approx(0.01) and f.index(min(f)) == 4


def test_snapshot_with_one_cycle_equals_the_single_model_with_cosine(tmp_path):
    _, single = _run(tmp_path, "single", {"name": "single"}, epochs=2, schedule="cosine")
    record, snap = _run(tmp_path, "snap", {"name": "snapshot", "members": 1}, epochs=2)
    assert _equal(_member(single, 0), _member(snap, 0))
    assert record["costs"]["train_epoch_equivalents"] == pytest.approx(2 * 2 * 32 / 192)


def test_snapshots_are_taken_at_cycle_ends(tmp_path):
    record, two = _run(tmp_path, "two", {"name": "snapshot", "members": 2}, epochs=2)
    _, one = _run(tmp_path, "one", {"name": "snapshot", "members": 1}, epochs=1)
    _, last = _run(tmp_path, "last", {"name": "snapshot", "members": 1, "cycles": 2, "cycle_epochs": 1}, epochs=7)
    # cycle 1 of a 2-cycle run = a 1-epoch, 1-cycle run; the last snapshot = the end of training
    assert _equal(_member(two, 0), _member(one, 0))
    assert _equal(_member(two, 1), _member(last, 0))
    assert not _equal(_member(two, 0), _member(two, 1))
    assert record["num_members"] == 2 and record["costs"]["train_epoch_equivalents"] == pytest.approx(2 * 64 / 192)


def test_fge_collects_at_the_learning_rate_minima(tmp_path):
    method = {"name": "fge", "pretrain_epochs": 1, "cycle_epochs": 2}
    record, two = _run(tmp_path, "two", {**method, "members": 2}, epochs=1)
    _, one = _run(tmp_path, "one", {**method, "members": 1}, epochs=1)
    _, four = _run(tmp_path, "four", {**method, "members": 2, "cycle_epochs": 4}, epochs=1)
    assert _equal(_member(two, 0), _member(one, 0))  # epoch 1 of cycle 1 (τ = ½) in both
    assert not _equal(_member(two, 0), _member(two, 1))
    assert not _equal(_member(two, 0), _member(four, 0))  # c = 4 collects after 2 epochs
    # pre-training 1 epoch + 2 cycles of 2 epochs
    assert record["costs"]["train_epoch_equivalents"] == pytest.approx(5 * 64 / 192)
    assert set(record["costs"]["stages"]) == {"pretrain", "fge"}


def test_fge_reuses_a_pretrained_run(tmp_path):
    single, _ = _run(tmp_path, "single", {"name": "single"}, epochs=1)
    method = {"name": "fge", "members": 1, "cycle_epochs": 2}
    _, own = _run(tmp_path, "own", {**method, "pretrain_epochs": 1}, epochs=1)
    rec, reused = _run(tmp_path, "reuse", {**method, "pretrain_run": str(tmp_path / "single")}, epochs=1)
    assert _equal(_member(own, 0), _member(reused, 0))
    assert rec["costs"]["stages"]["pretrain"]["train_flops"] == pytest.approx(single["costs"]["train_flops"])


@pytest.mark.parametrize(
    ("method", "epochs", "match"),
    [
        ({"name": "snapshot", "members": 3}, 4, "multiple of 3"),
        ({"name": "snapshot", "members": 3, "cycles": 2}, 4, "cycles"),
        ({"name": "fge", "cycle_epochs": 3}, 2, "even"),
    ],
)
def test_bad_options_are_refused(method, epochs, match):
    with pytest.raises(UserError, match=match):
        build_method(config_from_dict(tiny_config(method=method, train={"epochs": epochs})), 10, 192)
