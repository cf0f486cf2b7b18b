"""Plateau stopping (``Stage.stop``; MotherNets ``stop: plateau``): the rule, the engine, and kill/resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from ensemblekit.errors import UserError
from ensemblekit.methods import build_method
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import build_ensemble, describe_costs, load_run_data, make_engine, make_fabric, train
from ensemblekit.training.engine import Engine
from ensemblekit.training.stage import Stage
from ensemblekit.training.stopping import PlateauStopper, StopSpec
from tests.conftest import tiny_config

ARCHS = [{"name": "resnet8", "width": 0.25}, {"name": "resnet8", "width": 0.5}]
PLATEAU = {"name": "mothernets", "architectures": ARCHS, "stop": "plateau", "patience": 2, "max_epochs": 6}
PLATEAU["min_delta"] = 0.05  # 3 of the 64 validation images: the tiny run reaches a plateau in two stages


def _cfg(data=None, train=None, **method):
    return config_from_dict(
        tiny_config(
            data={"val_size": 64, **(data or {})},
            method={**PLATEAU, **method},
            train={"epochs": 6, "lr": 0.2, "seed": 1, "schedule": "constant", **(train or {})},
        )
    )


def _stops(values: list[float], patience: int, min_delta: float, higher_is_better: bool = True) -> int | None:
    """Reference rule: the first 1-based epoch ending ``patience`` epochs without a gain > ``min_delta``."""
    best, bad = None, 0
    for epoch, v in enumerate(values, 1):
        better = best is None or (v > best + min_delta if higher_is_better else v < best - min_delta)
        best, bad = (v, 0) if better else (best, bad + 1)
        if bad >= patience:
            return epoch
    return None


@pytest.mark.parametrize("monitor", ["val_accuracy", "val_nll"])
def test_stopper_follows_the_reference_rule(monitor):
    values = [0.30, 0.50, 0.505, 0.52, 0.51, 0.60, 0.55, 0.59, 0.58]
    for patience in (1, 2, 3):
        for min_delta in (0.0, 0.01, 0.05):
            stopper = PlateauStopper(StopSpec(patience=patience, min_delta=min_delta, monitor=monitor))
            got = None
            for epoch, v in enumerate(values, 1):
                if stopper.update({monitor: v if monitor == "val_accuracy" else -v}, epoch):
                    got = epoch
                    break
            assert got == _stops(values, patience, min_delta), (patience, min_delta)
    restored = PlateauStopper(StopSpec(patience=2, monitor=monitor))
    restored.load_state_dict(stopper.state_dict())
    assert restored.state_dict() == stopper.state_dict()
    with pytest.raises(ValueError, match="unknown monitor"):
        StopSpec(monitor="loss")


def test_plateau_needs_a_validation_split():
    with pytest.raises(UserError, match=r"method.stop: plateau needs a validation split: set data.val_size > 0"):
        build_method(_cfg(data={"val_size": 0}), num_classes=10, train_size=192)
    with pytest.raises(UserError, match="max_epochs"):
        _cfg(member_epochs=3)
    # the engine refuses any stage with plateau stopping when there is no validation split
    cfg = config_from_dict(tiny_config())
    fabric, data = make_fabric(cfg), load_run_data(cfg)
    method, ensemble = build_ensemble(cfg, data.num_classes, len(data.train.labels))
    engine = make_engine(cfg, fabric, data, {"ensemble": ensemble}, describe_costs(method, ensemble), run_dir=None)
    stage = Stage("s", ensemble.members[0], 2, stop=StopSpec())
    with pytest.raises(UserError, match=r"plateau stopping \(stage 's'\) needs a validation split"):
        engine.run([stage])


def test_mothernets_plateau_recipe_caps_every_stage():
    method = build_method(_cfg(), num_classes=10, train_size=192)
    stages = method.recipe(method.build())
    assert [(s.name, s.epochs) for s in stages] == [("mother_0", 6), ("member_0", 6), ("member_1", 6)]
    assert all(s.stop == StopSpec(patience=2, min_delta=0.05) for s in stages)
    fixed = build_method(_cfg(stop="fixed", max_epochs=None), num_classes=10, train_size=192)
    assert all(s.stop is None for s in fixed.recipe(fixed.build()))


def _rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "log.csv").open()))


def _events(run: Path, kind: str) -> list[dict]:
    return [e for e in map(json.loads, (run / "events.jsonl").read_text().splitlines()) if e["event"] == kind]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("plateau") / "run"
    train(_cfg(), run, quiet=True)
    return run


def test_stages_stop_where_the_logged_validation_accuracy_says(reference):
    rows = _rows(reference)
    stops = {e["stage"]: e["epoch"] for e in _events(reference, "plateau_stop")}
    assert stops, "the tiny run should reach a plateau in some stage"
    for stage in ("mother_0", "member_0", "member_1"):
        acc = [float(r["val_accuracy"]) for r in rows if r["stage"] == stage]
        expected = _stops(acc, patience=2, min_delta=0.05)
        assert stops.get(stage) == expected and len(acc) == (expected or 6), stage
    record = json.loads((reference / "metrics.json").read_text())
    images = record["costs"]["stages"]["member_0"]["images_seen"]
    assert images == 192 * len([r for r in rows if r["stage"] == "member_0"])  # the cost counts the epochs run


@pytest.mark.parametrize("case", ["after_a_stop", "inside_a_plateau"])
def test_kill_and_resume_stops_at_the_same_epoch_with_bitwise_weights(reference, tmp_path, monkeypatch, case):
    rows = _rows(reference)
    stops = {e["stage"]: e["epoch"] for e in _events(reference, "plateau_stop")}
    index = {r["stage"]: [] for r in rows}
    for n, r in enumerate(rows, 1):
        index[r["stage"]].append(n)
    stage = next(s for s in index if s in stops)
    # crash right after the checkpoint of the stopping epoch, or of the epoch before it (one bad epoch so far)
    crash_after = index[stage][stops[stage] - 1] - (0 if case == "after_a_stop" else 1)
    original, calls = Engine._run_epoch, []

    def crashing(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == crash_after:
            raise RuntimeError("killed")

    run = tmp_path / "run"
    monkeypatch.setattr(Engine, "_run_epoch", crashing)
    with pytest.raises(RuntimeError, match="killed"):
        train(_cfg(), run, quiet=True)
    monkeypatch.setattr(Engine, "_run_epoch", original)
    train(_cfg(), run, resume=True, quiet=True)
    a = torch.load(reference / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [(r["stage"], r["epoch"]) for r in _rows(run)] == [(r["stage"], r["epoch"]) for r in rows]
