"""Shared fixtures: tiny configs on the synthetic data set, so engine and CLI tests run in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import settings

# Property tests draw the same examples on every run, so CI cannot fail by chance (run with
# --hypothesis-profile=explore to search new examples).
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "data": {"name": "synthetic", "train_size": 192, "test_size": 64, "batch_size": 32, "eval_batch_size": 64},
    "model": {"name": "resnet8", "width": 0.5},
    "method": {"name": "single"},
    "train": {"epochs": 2, "lr": 0.05, "schedule": "cosine", "seed": 0},
    "runtime": {"accelerator": "cpu", "num_threads": 1},
}


def tiny_config(**sections) -> dict:
    """The tiny config with some sections' fields replaced."""
    cfg = {k: dict(v) for k, v in TINY.items()}
    for section, fields in sections.items():
        cfg.setdefault(section, {}).update(fields)
    return cfg


@pytest.fixture
def write_config(tmp_path):
    """Write a (tiny) config dict to a YAML file and return its path."""

    def _write(cfg: dict, name: str = "cfg.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    return _write


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m ensemblekit ARGS`` in a subprocess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ensemblekit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=REPO,
    )
