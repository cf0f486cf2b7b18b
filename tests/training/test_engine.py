"""Engine behaviour in-process: stages, hooks, costs, the non-finite-loss guard."""

import csv
import json

import pytest
import torch

from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import train
from ensemblekit.training.checkpoint import load_checkpoint
from ensemblekit.training.steps import NonFiniteLossError
from tests.conftest import tiny_config


def test_single_run_writes_a_complete_run_directory(tmp_path):
    cfg = config_from_dict(tiny_config(train={"epochs": 2}))
    record = train(cfg, tmp_path / "run", quiet=True)
    run = tmp_path / "run"
    for name in ("config.yaml", "log.csv", "events.jsonl", "checkpoints/last.pt", "model.pt", "metrics.json"):
        assert (run / name).exists(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["method"] == "single" and saved["num_members"] == 1 and saved["dataset"] == "synthetic"
    for key in ("accuracy", "nll", "ece", "brier", "disagreement", "normalized_disagreement"):
        assert key in saved["metrics"]
    costs = saved["costs"]
    assert costs["inference_flops_vs_single"] == pytest.approx(1.0)
    assert costs["params"] == costs["unique_params"] > 0
    # 2 epochs of the single model on the whole training set = 2 epoch-equivalents
    assert costs["train_epoch_equivalents"] == pytest.approx(2.0, rel=1e-6)
    assert costs["images_seen"] == 2 * 192
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0]["stage"] == "train"
    meta = (run / "config.yaml").read_text()
    assert "torch:" in meta and "git_commit" in meta
    assert record["metrics"]["accuracy"] == saved["metrics"]["accuracy"]


def test_deep_ensemble_members_differ_and_cost_adds_up(tmp_path):
    cfg = config_from_dict(tiny_config(method={"name": "deep_ensemble", "members": 3}, train={"epochs": 1}))
    record = train(cfg, tmp_path / "run", quiet=True)
    assert record["num_members"] == 3
    assert record["costs"]["train_epoch_equivalents"] == pytest.approx(3.0, rel=1e-6)
    assert record["costs"]["inference_flops_vs_single"] == pytest.approx(3.0)
    assert record["costs"]["params"] == record["costs"]["unique_params"]
    assert list(record["costs"]["stages"]) == ["member_0", "member_1", "member_2"]
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    first = next(k for k in state if k.startswith("members.0.") and state[k].dtype.is_floating_point)
    other = first.replace("members.0.", "members.1.")
    assert not torch.equal(state[first], state[other])


def test_member_zero_of_a_deep_ensemble_equals_the_single_model(tmp_path):
    single = train(config_from_dict(tiny_config(train={"epochs": 1})), tmp_path / "a", quiet=True)
    ens = train(
        config_from_dict(tiny_config(method={"name": "deep_ensemble", "members": 2}, train={"epochs": 1})),
        tmp_path / "b",
        quiet=True,
    )
    assert ens["members"][0]["accuracy"] == single["members"][0]["accuracy"]
    assert ens["members"][0]["nll"] == pytest.approx(single["members"][0]["nll"], abs=0)


def test_non_finite_loss_names_stage_epoch_and_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    import ensemblekit.training.engine as engine_mod

    calls = {"n": 0}
    real = engine_mod.member_cross_entropy

    def poisoned(out, y, *args):
        calls["n"] += 1
        loss = real(out, y, *args)
        return loss * float("nan") if calls["n"] > 6 + 2 else loss  # 6 steps per epoch: fails in epoch 2

    monkeypatch.setattr(engine_mod, "member_cross_entropy", poisoned)
    cfg = config_from_dict(tiny_config(train={"epochs": 3}))
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, tmp_path / "run", quiet=True)
    message = str(info.value)
    assert "stage 'train'" in message and "epoch 2" in message and "step 3" in message
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["stage_index"] == 0 and state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["modules"]["ensemble"].values() if v.is_floating_point())


def test_mc_dropout_is_stochastic_at_test_time(tmp_path):
    cfg = config_from_dict(tiny_config(method={"name": "mc_dropout", "members": 4, "dropout": 0.3}))
    record = train(cfg, tmp_path / "run", quiet=True)
    assert record["num_members"] == 4
    assert record["costs"]["inference_flops_vs_single"] == pytest.approx(4.0)
    assert record["costs"]["train_epoch_equivalents"] == pytest.approx(2.0, rel=1e-6)
    assert record["metrics"]["pairwise_kl"] > 0


def test_validation_split_is_logged_every_epoch_and_gives_a_calibrated_nll(tmp_path):
    cfg = config_from_dict(tiny_config(data={"val_size": 64}, train={"epochs": 2}))
    record = train(cfg, tmp_path / "run", quiet=True)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert all(0.0 <= float(r["val_accuracy"]) <= 1.0 and float(r["val_nll"]) > 0 for r in rows)
    assert record["data"]["val_size"] == 64 and record["data"]["train_size"] == 192
    assert record["metrics"]["temperature"] > 0 and record["metrics"]["calibrated_nll"] > 0


def test_sample_batches_are_a_pure_function_of_the_seed_and_leave_rngs_alone():
    from lightning.fabric import Fabric

    from ensemblekit.data import load_data
    from ensemblekit.metrics import TrainCostMeter
    from ensemblekit.training.engine import Engine

    data = load_data("synthetic", train_size=64, test_size=16)
    fabric = Fabric(accelerator="cpu", devices=1)
    engine = Engine(fabric, data, {"ensemble": torch.nn.Identity()}, batch_size=16, cost_meter=TrainCostMeter(1.0, 64))
    state = torch.get_rng_state()
    a = engine.sample_batches(3, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = engine.sample_batches(3, seed=7)
    c = engine.sample_batches(3, seed=8)
    assert len(a) == 3 and a[0][0].shape == (16, 3, 32, 32) and a[0][1].shape == (16,)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    plain = engine.sample_batches(1, seed=7, augment=False, batch_size=64)[0][0]
    assert plain.shape[0] == 64 and abs(float(plain.mean())) < 0.5  # normalised


def test_batch_accuracy_of_single_ensemble_and_per_member_targets():
    from ensemblekit.training.steps import batch_correct

    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[0.0, 2.0], [0.0, 2.0]]])  # [M=2, B=2, C=2]
    hits, rows = batch_correct(logits[0], torch.tensor([0, 0]))
    assert (float(hits), rows) == (1.0, 2)
    hits, rows = batch_correct(logits, torch.tensor([1, 1]))  # mean probs: row 0 tie -> class 0, row 1 -> 1
    assert (float(hits), rows) == (1.0, 2)
    hits, rows = batch_correct(logits, torch.tensor([[0, 1], [1, 0]]))  # member 0: 2/2, member 1: 1/2
    assert (float(hits), rows) == (1.5, 2)


def test_on_accelerators_a_non_finite_loss_is_caught_without_per_step_syncs(tmp_path, monkeypatch):
    """The deferred check (no device sync per step) still stops the run and keeps a finite checkpoint."""
    import ensemblekit.training.engine as engine_mod

    calls = {"n": 0}
    real = engine_mod.member_cross_entropy

    def poisoned(out, y, *args):
        calls["n"] += 1
        loss = real(out, y, *args)
        return loss * float("nan") if calls["n"] > 6 + 2 else loss

    monkeypatch.setattr(engine_mod, "member_cross_entropy", poisoned)
    monkeypatch.setattr(engine_mod, "checks_loss_every_step", lambda device: False)
    monkeypatch.setattr(engine_mod, "FINITE_CHECK_EVERY", 100)
    cfg = config_from_dict(tiny_config(train={"epochs": 3}))
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, tmp_path / "run", quiet=True)
    assert "epoch 2" in str(info.value) and "step 6" in str(info.value)  # found at the epoch's end
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["modules"]["ensemble"].values() if v.is_floating_point())


def test_hooks_get_what_they_use_from_the_stage_context_not_the_engine():
    from lightning.fabric import Fabric

    from ensemblekit.data import load_data
    from ensemblekit.metrics import TrainCostMeter
    from ensemblekit.training.engine import Engine
    from ensemblekit.training.stage import Stage, StageContext, StageHooks

    data = load_data("synthetic", train_size=64, test_size=16)
    meter = TrainCostMeter(1.0, 64)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    engine = Engine(Fabric(accelerator="cpu", devices=1), data, {"ensemble": net}, batch_size=16, cost_meter=meter)
    seen = {}

    def hook(ctx: StageContext) -> None:
        seen.update(
            meter=ctx.cost_meter,
            shape=ctx.image_shape,
            world=ctx.world_size,
            labels=ctx.train_labels,
            batches=ctx.sample_batches(2, 3, batch_size=8),
            probs=ctx.member_probs(net, "test")[0].shape,
            steps=ctx.steps_per_epoch(ctx.stage),
        )
        ctx.cost_meter.add_step(8, 5.0, backward=False)

    engine.run([Stage(name="s", module=net, epochs=1, hooks=StageHooks(at_end=[hook]))])
    assert not hasattr(StageContext, "engine") and "engine" not in StageContext.__dataclass_fields__
    assert seen["meter"] is meter and meter.summary()["stages"]["s"]["images_seen"] == 64 + 8
    assert seen["shape"] == (3, 32, 32) and seen["world"] == 1 and torch.equal(seen["labels"], data.train.labels)
    assert [tuple(x.shape) for x, _ in seen["batches"]] == [(8, 3, 32, 32)] * 2
    assert seen["probs"] == (1, 16, 10) and seen["steps"] == 64 // 16
    bare = StageContext(stage=None, stage_index=0, ensemble=net, module=net)
    with pytest.raises(RuntimeError, match="sample_batches is filled in by the engine"):
        bare.sample_batches(1, 0)
