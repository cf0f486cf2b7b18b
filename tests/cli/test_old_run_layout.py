"""Run directories written before method options were resolved (``members: null``, options left out) still work.

The run below is trained with today's code, then its ``config.yaml`` and ``model.pt`` are put back into the old
layout: the ``method`` section records only what the user gave (``members: null``), as every run before
issue 14 did. ``evaluate`` and ``train --resume`` must resolve it to the same defaults and call it the same run.
"""

import json

import pytest
import torch
import yaml

from ensemblekit.resolve import config_from_dict, load_config
from ensemblekit.runs import train
from ensemblekit.runs.directory import read_run_config
from ensemblekit.runs.extend import config_differences
from tests.conftest import run_cli, tiny_config

OLD_METHOD = {"name": "deep_ensemble", "members": None}
"""What config.yaml and model.pt recorded for ``method: {name: deep_ensemble}`` before options were resolved."""


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("old_layout")
    user = tiny_config(method={"name": "deep_ensemble"}, train={"epochs": 1})
    (d / "cfg.yaml").write_text(yaml.safe_dump(user))
    run = d / "run"
    train(config_from_dict(user), run, quiet=True)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["method"] == {"name": "deep_ensemble", "members": 4, "training": "sequential"}  # today's layout
    (d / "filled.yaml").write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "meta"}))
    cfg["method"] = dict(OLD_METHOD)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    state = torch.load(run / "model.pt", weights_only=True)
    state["identity"]["method"] = dict(OLD_METHOD)
    state["config"]["method"] = dict(OLD_METHOD)
    torch.save(state, run / "model.pt")
    return d / "cfg.yaml", run


def test_old_config_resolves_to_the_same_run(old_run):
    user, run = old_run
    saved = read_run_config(run)
    assert saved.method.members == 4 and saved.method.training == "sequential"
    assert config_differences(saved, load_config(user)) == {}


def test_old_run_evaluates(old_run):
    _, run = old_run
    recorded = json.loads((run / "metrics.json").read_text())["metrics"]
    result = run_cli("evaluate", str(run))
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((run / "eval.json").read_text())["metrics"]
    assert evaluated["accuracy"] == pytest.approx(recorded["accuracy"])
    assert evaluated["nll"] == pytest.approx(recorded["nll"], rel=1e-5)


@pytest.mark.parametrize("config", ["user", "own", "filled"])
def test_old_run_resumes(old_run, config):
    user, run = old_run
    # the user's file, the run's old-layout config.yaml, or a config with every option filled in
    path = {"user": user, "own": run / "config.yaml", "filled": user.parent / "filled.yaml"}[config]
    result = run_cli("train", str(path), "--out", str(run), "--resume")
    assert result.returncode == 0, result.stderr
    assert "differs" not in result.stderr
