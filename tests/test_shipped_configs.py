"""Every shipped config (``configs/**/*.yaml``) parses and trains for a few steps on tiny synthetic data.

A config added under ``configs/`` is picked up by the glob and tested automatically. The smoke run keeps the
config's model, method and recipe and replaces only the data and the budget (see ``SMOKE_OVERRIDES``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from ensemblekit.config import load_config
from ensemblekit.data import DATASETS
from ensemblekit.methods import METHODS
from ensemblekit.models import MODELS
from ensemblekit.runner import train

REPO = Path(__file__).resolve().parents[1]
CONFIG_ROOT = REPO / "configs"
CONFIGS = sorted(CONFIG_ROOT.glob("**/*.yaml"))

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

# The paper configs use WRN-28-10 (a forward + backward at batch 16 takes 1-2 s on a 2-core CPU) and up to 30
# members (MC dropout's S = 30 test-time passes). Their smoke runs keep at most 2 members so that this file runs
# in about a minute; 2 members still exercise the multi-member path (several stages, combination, diversity).
PAPER_SMOKE_MEMBERS = 2


def _config_id(path: Path) -> str:
    return path.relative_to(CONFIG_ROOT).as_posix()


def _members(cfg) -> int:
    """The number of members the config's method will build (its own default when ``members`` is unset)."""
    return METHODS.get(cfg.method.name).parse_options(cfg.method.options()).members


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


@pytest.mark.parametrize("path", CONFIGS, ids=_config_id)
def test_config_smoke_run(path: Path, tmp_path: Path):
    members = _members(load_config(path))
    overrides = list(SMOKE_OVERRIDES)
    if path.parent.name == "paper" and members > PAPER_SMOKE_MEMBERS:
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
