"""Every shipped config (``configs/**/*.yaml``) parses and trains for a few steps on tiny synthetic data.

A config added under ``configs/`` is picked up by the glob and tested automatically. The smoke run keeps the
config's model, method and recipe and replaces only the data, the budget and the runtime (CPU, float32; see
``SMOKE_OVERRIDES``).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from ensemblekit.data import DATASETS
from ensemblekit.methods import METHODS
from ensemblekit.models import MODELS
from ensemblekit.resolve import load_config
from ensemblekit.runs import train

REPO = Path(__file__).resolve().parents[1]
CONFIG_ROOT = REPO / "configs"
CONFIGS = sorted(p for p in CONFIG_ROOT.glob("**/*.yaml") if "suites" not in p.relative_to(CONFIG_ROOT).parts)
SUITES = sorted((CONFIG_ROOT / "suites").glob("*.yaml"))

SMOKE_OVERRIDES = [
    "data.name=synthetic",
    "data.train_size=64",
    "data.test_size=32",
    "data.val_size=0",
    "data.batch_size=16",
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
    "runtime.accelerator=cpu",
    "runtime.precision=32-true",
    "runtime.devices=1",
    "runtime.strategy=auto",
]

# The paper configs mostly use WRN-28-10 (36.5 M parameters, 10.5 GFLOPs per image; one training step takes
# seconds on a 2-core CPU) and up to 30 members (MC dropout's S = 30 test-time passes). Their smoke runs keep the
# model, method and recipe but use at most 2 members, one training step of 4 images per member and 8 test images;
# 2 members still exercise the multi-member path (several stages, combination, diversity metrics). They are
# marked slow (``pytest -m "not slow"`` skips them); the other configs get the full 2-step smoke run.
PAPER_SMOKE_MEMBERS = 2
PAPER_SMOKE_OVERRIDES = ["data.batch_size=4", "data.test_size=8", "train.max_steps_per_epoch=1"]


def _config_id(path: Path) -> str:
    return path.relative_to(CONFIG_ROOT).as_posix()


def _is_paper(path: Path) -> bool:
    return path.parent.name == "paper"


SMOKE_PARAMS = [
    pytest.param(path, id=_config_id(path), marks=[pytest.mark.slow] if _is_paper(path) else []) for path in CONFIGS
]


def _members(cfg) -> int:
    """The number of members the config's method will build (its own default when ``members`` is unset)."""
    return cfg.method.members  # resolved: the method's default or derived count when the file leaves it out


def test_configs_are_shipped():
    names = {_config_id(p) for p in CONFIGS}
    assert {"demo/single.yaml", "demo/deep_ensemble.yaml"} <= names
    assert any(name.startswith("paper/") for name in names)


def test_makefile_configs_exist():
    makefile = (REPO / "Makefile").read_text()
    used = re.findall(r"configs/\S+?\.yaml", makefile)
    assert used, "the Makefile's demo target should name its configs"
    for rel in used:
        assert (REPO / rel).is_file(), f"the Makefile uses {rel}, which does not exist"


@pytest.mark.parametrize("path", CONFIGS, ids=_config_id)
def test_config_loads(path: Path):
    assert path.read_text().startswith("#"), "a shipped config starts with a comment saying what it is"
    cfg = load_config(path)
    assert cfg.model.name in MODELS
    assert cfg.method.name in METHODS
    assert cfg.data.name in DATASETS
    assert _members(cfg) >= 1  # the method's own options (unknown ones are refused) validate too


@pytest.mark.parametrize("path", SMOKE_PARAMS)
def test_config_smoke_run(path: Path, tmp_path: Path):
    members = _members(load_config(path))
    overrides = list(SMOKE_OVERRIDES)
    if _is_paper(path):
        overrides += PAPER_SMOKE_OVERRIDES
        if members > PAPER_SMOKE_MEMBERS:
            overrides.append(f"method.members={PAPER_SMOKE_MEMBERS}")
            members = PAPER_SMOKE_MEMBERS
    cfg = load_config(path, overrides=overrides)

    record = train(cfg, tmp_path / "run", quiet=True)

    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["num_members"] == record["num_members"] == members
    assert saved["method"] == cfg.method.name
    assert saved["backbone"] == cfg.model.name
    for key in ("accuracy", "nll"):
        assert math.isfinite(saved["metrics"][key]), key
    assert 0.0 <= saved["metrics"]["accuracy"] <= 1.0
    assert len(saved["members"]) == members
    assert saved["costs"]["train_epoch_equivalents"] > 0
    shutil.rmtree(tmp_path / "run")  # a WRN-28-10 run directory holds hundreds of MB of weights; kept on failure


@pytest.mark.parametrize("path", SUITES, ids=[p.name for p in SUITES])
def test_shipped_suites_load_and_fit_their_budget(path):
    """Every shipped suite validates (each run's config and options) and every run's budget can be met."""
    from ensemblekit.bench.budget import RecipeCost, fit_epochs
    from ensemblekit.bench.suite import load_suite

    suite = load_suite(path)
    assert suite.runs
    for run in suite.runs:
        budget = suite.run_budget(run)
        if budget is None:
            continue
        raw = suite.run_config(run, 0)
        raw["data"] = {**raw.get("data", {}), "name": "synthetic"}
        cost = RecipeCost(raw, num_classes=10, train_size=raw["data"].get("train_size") or 50000)
        epochs, estimate = fit_epochs(cost, budget)
        assert epochs >= 1
        assert abs(estimate - budget) <= 0.25 * budget, f"{run.name}: {estimate} vs budget {budget}"
