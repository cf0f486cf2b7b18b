"""The CLI on runs of a user's module named by ``model.factory``, imported from the current directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import ensemblekit

NET = """
from torch import nn


def make(num_classes=10, width=8):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )
"""


def _cli(cwd, *args):
    src = str(Path(ensemblekit.__file__).resolve().parents[1])  # this checkout's package, whatever the cwd
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from ensemblekit.cli import main; sys.exit(main(sys.argv[1:]))"  # as the console script
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_cli_runs_a_module_from_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "user_nets_byo.py").write_text(NET)
    cfg = {
        "data": {"name": "synthetic", "train_size": 64, "test_size": 32, "batch_size": 32},
        "model": {"factory": "user_nets_byo:make", "kwargs": {"width": 4}},
        "method": {"name": "batch_ensemble", "members": 2},
        "train": {"epochs": 1, "max_steps_per_epoch": 2},
        "runtime": {"accelerator": "cpu", "num_threads": 1},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    trained = _cli(tmp_path, "train", "c.yaml", "--out", "run", "--quiet")  # the console script's sys.path
    assert trained.returncode == 0, trained.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["backbone"] == "custom" and metrics["num_members"] == 2

    from ensemblekit.errors import UserError
    from ensemblekit.resolve import config_from_dict
    from ensemblekit.runs import evaluate

    monkeypatch.syspath_prepend(str(tmp_path))
    assert evaluate(tmp_path / "run")["metrics"]["accuracy"] == metrics["metrics"]["accuracy"]
    cfg["model"]["factory"] = "nowhere_byo:make"
    with pytest.raises(UserError, match=r"^config error: model\.factory: cannot import 'nowhere_byo'"):
        config_from_dict(cfg)


def test_bench_suite_of_custom_module_runs(tmp_path):
    from ensemblekit.bench.run_suite import run_suite
    from tests.conftest import TINY

    base = {k: v for k, v in TINY.items() if k not in ("method", "model")}
    base["model"] = {"factory": "tests.byo.custom_nets:make_net"}
    runs = [{"name": "be2", "method": {"name": "batch_ensemble", "members": 2}}]
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "byo", "base": base, "budget": 2.0, "runs": runs}))
    status = run_suite(path, tmp_path / "out", quiet=True, say=lambda line: None)
    assert {k: e["state"] for k, e in status["runs"].items()} == {"be2/seed0": "done"}
    record = json.loads((tmp_path / "out" / "runs" / "be2" / "seed0" / "metrics.json").read_text())
    assert record["backbone"] == "custom" and record["costs"]["train_epoch_equivalents"] > 0


def test_grow_a_subnetwork_run_of_a_custom_module(tmp_path):
    from ensemblekit.resolve import config_from_dict
    from ensemblekit.runs import train
    from ensemblekit.runs.grow import grow
    from tests.conftest import tiny_config

    raw = tiny_config(
        method={"name": "subnetwork", "members": 2},
        train={"epochs": 1, "max_steps_per_epoch": 2},
        data={"train_size": 64, "test_size": 32},
    )
    raw["model"] = {"factory": "tests.byo.custom_nets:make_net"}
    train(config_from_dict(raw), tmp_path / "run", quiet=True)
    record = grow(tmp_path / "run", 2, quiet=True)
    assert record["num_members"] == 4 and record["backbone"] == "custom"
    assert ensemblekit.load(tmp_path / "run", device="cpu").num_members == 4
