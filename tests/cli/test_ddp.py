"""Multi-process data parallel through Fabric's DDP strategy: 2 CPU processes (gloo)."""

import json

from tests.conftest import run_cli, tiny_config


def test_two_process_ddp_run_is_valid_and_evaluates_the_whole_test_set(write_config, tmp_path):
    cfg = write_config(
        tiny_config(
            data={"test_size": 70},  # not divisible by 2 x batch: padding must be dropped
            train={"epochs": 1},
            runtime={"accelerator": "cpu", "devices": 2, "strategy": "ddp", "num_threads": 1},
        )
    )
    out = tmp_path / "run"
    result = run_cli("train", str(cfg), "--out", str(out), "--quiet", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["test_size"] == 70
    # each process trained on half of every epoch: the cost meter counts both
    assert metrics["costs"]["images_seen"] == 192
    # evaluating the saved weights in one process gives the same numbers as the gathered DDP evaluation
    single = run_cli("evaluate", str(out), "--json")
    assert single.returncode == 0, single.stderr
    evaluated = json.loads(single.stdout)["metrics"]
    assert evaluated["accuracy"] == metrics["metrics"]["accuracy"]
    assert abs(evaluated["nll"] - metrics["metrics"]["nll"]) < 1e-5


def test_member_parallel_deep_ensemble_on_two_processes_equals_the_one_process_run_bitwise(write_config, tmp_path):
    import csv

    import torch

    from ensemblekit.resolve import config_from_dict
    from ensemblekit.runs import train

    tiny = tiny_config(method={"name": "deep_ensemble", "members": 4}, train={"epochs": 2, "max_steps_per_epoch": 3})
    two = {**tiny["runtime"], "devices": 2, "strategy": "ddp", "parallel": "members"}
    out = tmp_path / "run"
    result = run_cli("train", str(write_config({**tiny, "runtime": two})), "--out", str(out), "--quiet", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = train(config_from_dict(tiny), tmp_path / "ref", quiet=True)  # one process, the same 1 thread
    ref = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)["state_dict"]
    got = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert ref.keys() == got.keys()
    assert [k for k in ref if not torch.equal(ref[k], got[k])] == []  # every member, bitwise
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"] == reference["metrics"]
    # no member was sharded: each saw its 3 steps x 32 images per epoch, as in one process
    assert metrics["costs"]["images_seen"] == reference["costs"]["images_seen"] == 4 * 2 * 3 * 32
    assert list(metrics["costs"]["stages"]) == [f"member_{i}" for i in range(4)]
    rows = [(r["stage"], r["epoch"]) for r in csv.DictReader((out / "log.csv").open())]
    assert rows == [(f"member_{i}", str(e)) for i in range(4) for e in (1, 2)]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    trained_on = {e["stage"]: e["rank"] for e in events if e["event"] == "stage_end"}
    assert trained_on == {"member_0": 0, "member_1": 1, "member_2": 0, "member_3": 1}
    assert not (out / "ranks").exists() and sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt"]


def test_member_parallel_stops_every_process_when_one_process_fails(write_config, tmp_path):
    """Only one rank's members diverge; the healthy rank learns it after the wave and stops too (no hang)."""
    tiny = tiny_config(method={"name": "deep_ensemble", "members": 4}, train={"epochs": 1, "max_steps_per_epoch": 2})
    tiny["model"] = {"factory": "tests.byo.custom_nets:make_every_second_exploding"}
    two = {**tiny["runtime"], "devices": 2, "strategy": "ddp", "parallel": "members"}
    result = run_cli("train", str(write_config({**tiny, "runtime": two})), "--out", str(tmp_path / "run"), timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "training diverged" in result.stderr or "member-parallel: process 1 failed" in result.stderr
    assert "Traceback" not in result.stderr
