"""Member-parallel training (runtime.parallel: members): waves from declared needs, recipes' needs, resume.

The scheduler runs here in one process (``member_parallel`` forced on): every wave, checkpoint and log merge
happens as with several processes, only the broadcasts are skipped. tests/cli/test_ddp.py runs it on 2 processes.
"""

import csv
import importlib
import json

import pytest
import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.metrics import TrainCostMeter
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import train
from ensemblekit.runs.loading import build_ensemble
from ensemblekit.training.member_parallel import assign_ranks, merge_costs, raise_wave_failures, stage_waves
from ensemblekit.training.stage import Stage
from tests.conftest import tiny_config


def _stage(name, needs=None, epochs=1):
    return Stage(name, nn.Identity(), epochs, needs=needs)


def test_waves_follow_the_declared_needs_and_none_means_every_earlier_stage():
    stages = [
        _stage("parent"),
        _stage("make_0", ("parent",)),
        _stage("make_1", ("parent",)),
        _stage("child_0", ("make_0",)),
        _stage("child_1", ("make_1",)),
        _stage("select"),  # None: after everything before it
        _stage("extra", ()),  # needs nothing: first wave
    ]
    assert stage_waves(stages) == [[0, 6], [1, 2], [3, 4], [5]]
    # finished stages are dropped and count as satisfied
    assert stage_waves(stages, {"parent", "make_0", "extra"}) == [[2, 3], [4], [5]]
    sequential = [_stage(f"s{i}") for i in range(3)]
    assert stage_waves(sequential) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="not earlier stages"):
        stage_waves([_stage("a", ("b",)), _stage("b", ())])


def test_stages_go_round_robin_to_ranks():
    assert assign_ranks([0, 1, 2, 3, 4], 2) == [[0, 2, 4], [1, 3]]
    assert assign_ranks([7], 3) == [[7], [], []]


def test_merged_costs_sum_the_ranks_stages_in_recipe_order():
    meter = TrainCostMeter(1.0, 10)
    ranks = []
    for names in (["b"], ["a", "c"]):
        m = TrainCostMeter(1.0, 10)
        for n in names:
            m.start_stage(n)
            m.add_step(10, 1.0)
        ranks.append(m.state_dict())
    merge_costs(meter, ranks, ["a", "b", "c"])
    summary = meter.summary()
    assert list(summary["stages"]) == ["a", "b", "c"]
    assert summary["train_epoch_equivalents"] == pytest.approx(3.0)


def _recipe(method, **extra):
    cfg = config_from_dict(tiny_config(method=method, **extra))
    m, ensemble = build_ensemble(cfg, 10, 192)
    return {s.name: s.needs for s in m.recipe(ensemble)}


ARCHS = [{"name": "resnet8", "width": 0.25}, {"name": "resnet8", "width": 0.5}, {"name": "resnet14", "width": 0.5}]


def test_recipes_declare_what_their_stages_need():
    members = {f"member_{i}": () for i in range(3)}
    assert _recipe({"name": "deep_ensemble", "members": 3}) == members
    assert _recipe({"name": "bagging", "members": 3}) == members
    assert _recipe({"name": "distillation", "members": 2}) == {
        "teacher": None,
        "member_0": ("teacher",),
        "member_1": ("teacher",),
    }
    cfg = config_from_dict(tiny_config(method={"name": "mothernets", "architectures": ARCHS, "clusters": 2}))
    method, ensemble = build_ensemble(cfg, 10, 192)
    mothernets = {s.name: s.needs for s in method.recipe(ensemble)}
    assert mothernets["mother_0"] == mothernets["mother_1"] == ()
    assert sorted(len(c) for c in method.clusters) == [1, 2]
    for k, cluster in enumerate(method.clusters):  # every member needs exactly the MotherNet it hatches from
        assert all(mothernets[f"member_{i}"] == (f"mother_{k}",) for i in cluster)
    subnetwork = _recipe({"name": "subnetwork", "members": 2, "candidates": 4}, data={"val_size": 32})
    assert subnetwork["parent"] is None and subnetwork["select"] is None  # select reads every child
    for i in range(4):
        assert subnetwork[f"child_{i}_make"] == ("parent",) and subnetwork[f"child_{i}"] == (f"child_{i}_make",)


def _members_forced(monkeypatch):
    run_train = importlib.import_module("ensemblekit.runs.train")  # the module (the package exports the function)
    monkeypatch.setattr(run_train, "member_parallel", lambda cfg, fabric: True)


def _state(path):
    return torch.load(path / "model.pt", weights_only=True)["state_dict"]


class _Killed(Exception):
    pass


def _kill_after_save(monkeypatch, path_name, at):
    """Make Engine.save raise right after it wrote ``path_name`` at (stage_index, epoch) ``at``."""
    import ensemblekit.training.engine as engine_mod

    real = engine_mod.Engine.save

    def save_then_die(self, stage_index, epoch, *args, **kwargs):
        real(self, stage_index, epoch, *args, **kwargs)
        if self.checkpoint_path is not None and self.checkpoint_path.name == path_name and (stage_index, epoch) == at:
            raise _Killed

    monkeypatch.setattr(engine_mod.Engine, "save", save_then_die)
    return real


LOOP = {"accelerator": "cpu", "num_threads": 1, "member_execution": "loop"}  # one process would pack members
DEEP = tiny_config(
    method={"name": "deep_ensemble", "members": 3}, train={"epochs": 2, "max_steps_per_epoch": 3}, runtime=LOOP
)
SUBNET = tiny_config(
    method={"name": "subnetwork", "members": 2}, train={"epochs": 1, "max_steps_per_epoch": 2}, runtime=LOOP
)


@pytest.mark.parametrize(
    ("config", "path_name", "at"),
    [
        (DEEP, "rank0.pt", (1, 1)),  # inside the only wave: member_1 after its first epoch
        (SUBNET, "last.pt", (3, 0)),  # between waves: parent and both makes done, children not started
        (SUBNET, "rank0.pt", (0, 1)),  # in the last wave: child_0 after its first epoch
    ],
)
def test_a_killed_member_parallel_run_resumes_to_the_one_process_weights(tmp_path, monkeypatch, config, path_name, at):
    reference = train(config_from_dict(config), tmp_path / "ref", quiet=True)
    _members_forced(monkeypatch)
    cfg = config_from_dict({**config, "runtime": {**config["runtime"], "parallel": "members"}})
    real = _kill_after_save(monkeypatch, path_name, at)
    with pytest.raises(_Killed):
        train(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "model.pt").exists()
    import ensemblekit.training.engine as engine_mod

    monkeypatch.setattr(engine_mod.Engine, "save", real)
    record = train(cfg, tmp_path / "run", quiet=True, resume=True)
    ref, out = _state(tmp_path / "ref"), _state(tmp_path / "run")
    assert ref.keys() == out.keys()
    for key in ref:  # bitwise (NaN: a subnetwork's unset validation scores)
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=0, equal_nan=True)
    assert record["costs"]["images_seen"] == reference["costs"]["images_seen"]
    assert list(record["costs"]["stages"]) == list(reference["costs"]["stages"])
    rows = [(r["stage"], r["epoch"]) for r in csv.DictReader((tmp_path / "run" / "log.csv").open())]
    expected = [(r["stage"], r["epoch"]) for r in csv.DictReader((tmp_path / "ref" / "log.csv").open())]
    assert rows == expected  # every epoch logged once, in recipe order
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    resumed = [e for e in events if e["event"] == "resume"]
    if path_name == "rank0.pt":  # the rank continued its stage at the epoch it had checkpointed
        assert [(e["stage_index"], e["epoch"]) for e in resumed if e.get("rank") == 0] == [at]
    else:  # the run continued after the finished wave
        assert [e["finished_stages"] for e in resumed] == [["parent", "child_0_make", "child_1_make"]]
    assert not (tmp_path / "run" / "ranks").exists()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.pt"]


@pytest.mark.parametrize(
    ("runtime", "message"),
    [({"member_execution": "packed"}, "cannot pack members"), ({"logger": "tensorboard"}, "csv logs only")],
)
def test_member_parallel_refuses_what_it_cannot_combine_with(runtime, message):
    """Refused when the config loads (before any data or run directory), in one line naming the section."""
    raw = tiny_config(runtime={"accelerator": "cpu", "parallel": "members", **runtime})
    with pytest.raises(UserError, match=rf"^config error: runtime: parallel: members .*{message}") as err:
        config_from_dict(raw)
    assert "\n" not in str(err.value)


def test_overwrite_removes_a_killed_member_parallel_runs_wave_files(tmp_path):
    from ensemblekit.runs.directory import litter, prepare_run_dir

    run = tmp_path / "run"
    (run / "ranks" / "1").mkdir(parents=True)
    (run / "ranks" / "1" / "log.csv").write_text("stage,epoch\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "rank1.pt").write_bytes(b"x")
    (run / "checkpoints" / ".rank1.pt.abc.tmp").write_bytes(b"x")  # a kill during its atomic write
    assert [p.name for p in litter(run)] == [".rank1.pt.abc.tmp"]
    with pytest.raises(UserError, match="already holds a run"):
        prepare_run_dir(run, resume=False, overwrite=False)
    prepare_run_dir(run, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == []


def test_a_rank_that_failed_reraises_its_own_error_and_the_others_stop_naming_it():
    own = ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        raise_wave_failures(own, [None, "boom"], rank=1)
    with pytest.raises(UserError, match=r"^member-parallel: process 1 failed, so this process stops too: boom$"):
        raise_wave_failures(None, [None, "boom"], rank=0)
    raise_wave_failures(None, [None, None], rank=0)  # nobody failed: the wave goes on
