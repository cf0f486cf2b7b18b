"""TrainCostMeter arithmetic, stages and checkpointing."""

import pytest
import torch

from ensemblekit.metrics import TrainCostMeter

SINGLE = 5.56e8  # forward FLOPs per image of some backbone
TRAIN = 50000


def _epoch(meter: TrainCostMeter, flops: float = SINGLE, backward: bool = True, batch: int = 128) -> None:
    for start in range(0, TRAIN, batch):
        meter.add_step(images=min(batch, TRAIN - start), forward_flops_per_image=flops, backward=backward)


def test_one_epoch_of_the_single_model_is_one():
    meter = TrainCostMeter(single_forward_flops=SINGLE, train_set_size=TRAIN)
    meter.start_stage("train")
    _epoch(meter)
    summary = meter.summary()
    assert summary["train_epoch_equivalents"] == pytest.approx(1.0, rel=1e-12)
    assert summary["train_flops"] == pytest.approx(3 * SINGLE * TRAIN)
    assert summary["images_seen"] == TRAIN
    assert summary["stages"]["train"]["train_epoch_equivalents"] == pytest.approx(1.0)


def test_stages_forward_only_and_ensembles():
    meter = TrainCostMeter(SINGLE, TRAIN)
    meter.start_stage("mother")
    _epoch(meter)
    _epoch(meter)
    meter.add_time(12.5)
    meter.start_stage("members")
    for _ in range(4):  # four members, one epoch each, a member is 1/2 the single model's FLOPs
        _epoch(meter, flops=SINGLE / 2)
    meter.start_stage("bn_refresh")
    _epoch(meter, backward=False)  # forward only: 1/3 of an epoch
    with meter.timer():
        pass
    summary = meter.summary()
    assert list(summary["stages"]) == ["mother", "members", "bn_refresh"]
    stages = summary["stages"]
    assert stages["mother"]["train_epoch_equivalents"] == pytest.approx(2.0)
    assert stages["members"]["train_epoch_equivalents"] == pytest.approx(2.0)
    assert stages["bn_refresh"]["train_epoch_equivalents"] == pytest.approx(1 / 3)
    assert summary["train_epoch_equivalents"] == pytest.approx(2 + 2 + 1 / 3)
    assert stages["mother"]["train_seconds"] == 12.5
    assert 0.0 <= stages["bn_refresh"]["train_seconds"] < 1.0
    assert summary["train_seconds"] == pytest.approx(12.5 + stages["bn_refresh"]["train_seconds"])
    assert summary["images_seen"] == 7 * TRAIN
    assert set(stages["members"]) == {"train_flops", "train_epoch_equivalents", "train_seconds", "images_seen"}


def test_restarting_a_stage_continues_it_and_default_stage():
    meter = TrainCostMeter(1.0, 10)
    meter.add_step(10, 1.0)  # before any stage
    assert meter.current_stage == "default"
    meter.start_stage("a")
    meter.add_step(10, 1.0)
    meter.start_stage("a")
    meter.add_step(10, 1.0)
    assert meter.summary()["stages"]["a"]["train_flops"] == 60.0
    assert list(meter.summary()["stages"]) == ["default", "a"]


def test_state_dict_round_trip_through_a_weights_only_checkpoint(tmp_path):
    meter = TrainCostMeter(SINGLE, TRAIN)
    meter.start_stage("fission")
    meter.add_step(256, SINGLE * 2)
    meter.add_time(3.25)
    meter.start_stage("train")
    meter.add_step(100, SINGLE, backward=False)
    path = tmp_path / "ckpt.pt"
    torch.save({"cost_meter": meter.state_dict()}, path)
    state = torch.load(path, weights_only=True)["cost_meter"]
    restored = TrainCostMeter(1.0, 1)
    restored.load_state_dict(state)
    assert restored.summary() == meter.summary()
    assert restored.current_stage == "train"
    assert restored.state_dict() == meter.state_dict()
    restored.add_step(10, SINGLE)  # resumes into the current stage
    assert restored.summary()["stages"]["train"]["images_seen"] == 110


def test_invalid_arguments_and_states():
    with pytest.raises(ValueError, match="single_forward_flops"):
        TrainCostMeter(0, 10)
    with pytest.raises(ValueError, match="train_set_size"):
        TrainCostMeter(1.0, 0)
    meter = TrainCostMeter(1.0, 10)
    with pytest.raises(ValueError, match="images"):
        meter.add_step(-1, 1.0)
    with pytest.raises(ValueError, match="forward_flops"):
        meter.add_step(1, -1.0)
    with pytest.raises(ValueError, match="seconds"):
        meter.add_time(-1.0)
    with pytest.raises(ValueError, match="stage name"):
        meter.start_stage("")
    with pytest.raises(ValueError, match="not a TrainCostMeter state"):
        meter.load_state_dict({"version": 1})
    state = meter.state_dict()
    state["current_stage"] = "missing"
    with pytest.raises(ValueError, match="missing"):
        meter.load_state_dict(state)
