"""Packed members (runtime.member_execution: packed) compute what sequential training computes."""

import copy
import csv

import pytest
import torch
from lightning.fabric import Fabric

from ensemblekit.data import load_data
from ensemblekit.metrics import TrainCostMeter
from ensemblekit.models import create_model
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import train
from ensemblekit.training.engine import Engine
from ensemblekit.training.packed_members import (
    MemberPack,
    pack_member_stages,
    repack_like,
    resolve_member_execution,
)
from ensemblekit.training.stage import OptimSpec, ScheduleSpec, Stage, StageHooks
from tests.conftest import tiny_config


def _members(n: int = 3) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [create_model("resnet8", 10, width=0.25).double() for _ in range(n)]


def _stages(members, epochs: int = 2, **kw) -> list[Stage]:
    optim = OptimSpec(lr=0.05, weight_decay=5e-4, decay_bn_and_bias=False)
    schedule = ScheduleSpec(name="cosine", warmup_epochs=0.5)
    return [
        Stage(f"member_{i}", m, epochs, optim=optim, schedule=schedule, data_seed=10 + i, flops_per_image=1.0, **kw)
        for i, m in enumerate(members)
    ]


def _train(stages, members, data, max_steps: int = 3) -> None:
    fabric = Fabric(accelerator="cpu", devices=1, precision="64-true")
    meter = TrainCostMeter(1.0, len(data.train.labels))
    modules = {"ensemble": torch.nn.ModuleList(members)}
    Engine(fabric, data, modules, batch_size=16, cost_meter=meter, max_steps_per_epoch=max_steps).run(stages)


@pytest.mark.parametrize("grad_clip", [None, 0.5])
def test_three_members_trained_packed_equal_sequential_training_in_float64(grad_clip):
    data = load_data("synthetic", train_size=96, test_size=16)
    seq = _members()
    packed = copy.deepcopy(seq)
    _train(_stages(seq, grad_clip=grad_clip), seq, data)
    stages, notes = pack_member_stages(_stages(packed, grad_clip=grad_clip), "packed", torch.device("cpu"))
    assert len(stages) == 1 and stages[0].packed is not None and notes == []
    _train(stages, packed, data)
    for a, b in zip(seq, packed):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            # the loss is float32 (as in the engine), hence a float32-sized tolerance
            torch.testing.assert_close(sb[k], sa[k], rtol=1e-5, atol=1e-6, msg=k)
    # the members did train and differ (own initialisation and data order)
    assert not torch.equal(seq[0].state_dict()["head.fc.weight"], seq[1].state_dict()["head.fc.weight"])


def test_packing_keeps_stages_that_cannot_be_packed_sequential():
    members = _members(4)
    stages = [*_stages(members[:2]), Stage("hooked", members[2], 2, hooks=StageHooks(at_end=[print]))]
    stages += _stages(members[3:])
    out, notes = pack_member_stages(stages, "packed", torch.device("cpu"))
    assert [s.name for s in out] == ["member_0+member_1", "hooked", "member_0"]
    assert len(notes) == 1 and "'hooked' runs alone (it has hooks)" in notes[0]
    assert pack_member_stages(stages, "loop", torch.device("cpu"))[0] == stages
    assert pack_member_stages(stages, "auto", torch.device("cpu"))[0] == stages  # CPU: auto keeps the loop
    twice = [*_stages(members[:1]), *_stages(members[:1])]  # one module trained in two stages: never packed
    assert pack_member_stages(twice, "packed", torch.device("cpu"))[0] == twice
    other = _stages([members[0], create_model("resnet8", 10, width=0.5).double()])
    assert len(pack_member_stages(other, "packed", torch.device("cpu"))[0]) == 2  # different architectures


def test_a_resumed_run_keeps_the_execution_form_of_its_checkpoint():
    stages = _stages(_members(3))
    names = [s.name for s in stages]
    again = repack_like(stages, ["member_0+member_1", "member_2"])
    assert [s.name for s in again] == ["member_0+member_1", "member_2"] and again[0].packed == stages[:2]
    assert repack_like(stages, names) == stages
    assert repack_like(stages, ["member_0", "member_2"]) is None


def test_auto_packs_small_members_on_cuda_only():
    small = create_model("resnet8", 10, width=0.25)
    assert resolve_member_execution("auto", torch.device("cuda"), small) == "packed"
    assert resolve_member_execution("auto", torch.device("cpu"), small) == "loop"
    assert resolve_member_execution("packed", torch.device("cpu"), small) == "packed"


def test_member_pack_forward_and_write_back_match_the_members():
    members = _members(2)
    pack = MemberPack(members)
    x = torch.randn(2, 4, 3, 32, 32, dtype=torch.float64)
    pack.train(False)
    out = pack.forward(x)
    for i, m in enumerate(members):
        m.eval()
        torch.testing.assert_close(out[i], m(x[i]))
    with torch.no_grad():
        pack.params["head.fc.weight"][1].add_(1.0)
        pack.buffers["stem.bn.running_mean"][0].add_(2.0)
    before = members[1].head.fc.weight.clone()
    pack.write_back()
    torch.testing.assert_close(members[1].head.fc.weight, before + 1.0)
    assert members[0].stem.bn.running_mean.min() > 1.0


def test_packed_deep_ensemble_run_logs_and_charges_every_member(tmp_path):
    base = tiny_config(method={"name": "deep_ensemble", "members": 3}, train={"epochs": 2})
    loop = train(config_from_dict(base), tmp_path / "loop", quiet=True)
    base["runtime"] = {**base["runtime"], "member_execution": "packed"}
    packed = train(config_from_dict(base), tmp_path / "packed", quiet=True)
    assert list(packed["costs"]["stages"]) == ["member_0", "member_1", "member_2"]
    assert packed["costs"]["train_epoch_equivalents"] == pytest.approx(loop["costs"]["train_epoch_equivalents"])
    rows = list(csv.DictReader((tmp_path / "packed" / "log.csv").open()))
    assert sorted((r["stage"], r["epoch"]) for r in rows) == sorted(
        (f"member_{i}", str(e)) for i in range(3) for e in (1, 2)
    )
    for a, b in zip(loop["members"], packed["members"]):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=0.05)


@pytest.mark.parametrize("interrupt_at_step", [2, 9])
def test_an_interrupted_packed_run_resumes_bitwise(tmp_path, monkeypatch, interrupt_at_step):
    """Ctrl-C inside a packed stage (epoch 1, then epoch 2), resume: weights bitwise equal to an uninterrupted run."""
    import os
    import signal

    from ensemblekit.metrics import TrainCostMeter as Meter
    from ensemblekit.training.steps import TrainingInterrupted

    base = tiny_config(method={"name": "deep_ensemble", "members": 2}, train={"epochs": 2})
    base["runtime"] = {**base["runtime"], "member_execution": "packed"}
    cfg = config_from_dict(base)
    train(cfg, tmp_path / "ref", quiet=True)
    calls = {"n": 0}
    add_step = Meter.add_step

    def counting(self, *args, **kwargs):
        add_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2 * interrupt_at_step:  # two members charged per packed step
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Meter, "add_step", counting)
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "run", quiet=True)
    monkeypatch.setattr(Meter, "add_step", add_step)
    train(cfg, tmp_path / "run", resume=True, quiet=True)
    ref = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)["state_dict"]
    out = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    assert ref.keys() == out.keys() and all(torch.equal(ref[k], out[k]) for k in ref)
    rows = [(r["stage"], r["epoch"]) for r in csv.DictReader((tmp_path / "run" / "log.csv").open())]
    assert sorted(rows) == [("member_0", "1"), ("member_0", "2"), ("member_1", "1"), ("member_1", "2")]


def test_a_checkpoint_of_another_recipe_is_refused(tmp_path):
    base = tiny_config(method={"name": "deep_ensemble", "members": 2}, train={"epochs": 1})
    train(config_from_dict(base), tmp_path / "run", quiet=True)
    from ensemblekit.errors import UserError
    from ensemblekit.training.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    assert state["stage_names"] == ["member_0", "member_1"]
    state["stage_names"] = ["member_0", "teacher"]
    save_checkpoint(path, state)
    with pytest.raises(UserError, match="member_execution"):
        train(config_from_dict(base), tmp_path / "run", resume=True, quiet=True)


def test_packed_members_train_under_bf16_autocast(tmp_path):
    base = tiny_config(method={"name": "bagging", "members": 2}, train={"epochs": 1})
    base["runtime"] = {**base["runtime"], "member_execution": "packed", "precision": "bf16-mixed"}
    record = train(config_from_dict(base), tmp_path / "run", quiet=True)
    assert list(record["costs"]["stages"]) == ["member_0", "member_1"]
    assert record["metrics"]["nll"] == record["metrics"]["nll"] and record["metrics"]["nll"] < 10
    events = (tmp_path / "run" / "events.jsonl").read_text()
    assert '"stage": "member_0+member_1"' in events  # the bootstrap members trained packed


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ({"name": "deep_ensemble", "members": 3}, ["member_0+member_1+member_2"]),
        ({"name": "bagging", "members": 2}, ["member_0+member_1"]),
        (
            {
                "name": "mothernets",
                "architectures": [{"name": "resnet8", "width": 0.5}] * 2 + [{"name": "resnet14", "width": 0.5}],
            },
            ["mother_0", "member_0+member_1", "member_2"],
        ),
        (  # the children's set-ups (0 epochs, hoisted) run first, then the children together
            {"name": "subnetwork", "members": 2},
            ["parent", "child_0_make", "child_1_make", "child_0+child_1"],
        ),
    ],
)
def test_methods_with_independent_members_of_one_architecture_pack(method, expected):
    from ensemblekit.runs import build_ensemble

    cfg = config_from_dict(tiny_config(method=method, train={"epochs": 10}))  # MotherNets: 8 + 2 epochs
    built, ensemble = build_ensemble(cfg, 10, 192)
    stages, _ = pack_member_stages(built.recipe(ensemble), "packed", torch.device("cpu"))
    assert [s.name for s in stages] == expected


def test_packed_subnetwork_children_equal_sequential_children_in_float64():
    """Masked children (weight parametrizations) packed: equal to tuning them one after another."""
    from ensemblekit.runs import build_ensemble

    cfg = config_from_dict(
        tiny_config(method={"name": "subnetwork", "members": 2, "bn_refresh_batches": 0}, train={"epochs": 1})
    )
    data = load_data("synthetic", train_size=96, test_size=16)
    finals = []
    for mode in ("loop", "packed"):
        method, ensemble = build_ensemble(cfg, 10, 96)
        ensemble.double()
        stages, _ = pack_member_stages(method.recipe(ensemble), mode, torch.device("cpu"))
        for stage in stages:
            stage.flops_per_image = 1.0
        assert any(s.packed for s in stages) == (mode == "packed")
        fabric = Fabric(accelerator="cpu", devices=1, precision="64-true")
        meter = TrainCostMeter(1.0, 96)
        modules = method.state_modules(ensemble)
        Engine(fabric, data, modules, batch_size=16, cost_meter=meter, max_steps_per_epoch=3).run(stages)
        finals.append(ensemble.state_dict())
    loop, packed = finals
    for k in loop:
        torch.testing.assert_close(packed[k], loop[k], rtol=1e-5, atol=1e-6, equal_nan=True, msg=k)
