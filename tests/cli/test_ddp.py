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
