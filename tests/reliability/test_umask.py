"""Every file a run writes gets the mode the user's umask gives (not mkstemp's 0600, not a fixed 0644)."""

import os
import stat

import numpy as np
import pytest
import yaml

from ensemblekit.cli import main
from tests.conftest import tiny_config

UMASK = 0o027


@pytest.fixture
def umask():
    old = os.umask(UMASK)
    try:
        yield UMASK
    finally:
        os.umask(old)


def _modes(root):
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in sorted(root.rglob("*"))}


def test_every_file_of_a_run_honours_the_umask(tmp_path, umask, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(method={"name": "deep_ensemble", "members": 2}, train={"epochs": 1})))
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"metrics: {out / 'metrics.json'}" in printed and "member mean" in printed
    assert main(["evaluate", str(out)]) == 0
    modes = _modes(out)
    for name in ("config.yaml", "log.csv", "steps.csv", "events.jsonl", "metrics.json", "model.pt", "eval.json"):
        assert name in modes, sorted(modes)
    expected = {name: (0o750 if (out / name).is_dir() else 0o640) for name in modes}
    assert modes == expected


def test_decode_cache_entries_honour_the_umask(tmp_path, umask):
    from ensemblekit.data.cache import DecodeCache

    entry = DecodeCache(tmp_path / "cache").save(tmp_path / "source", "fp", {"x": np.zeros(3)})
    assert stat.S_IMODE(entry.stat().st_mode) == 0o750  # a mkdtemp folder renamed into place: 0700 before
    assert {stat.S_IMODE(p.stat().st_mode) for p in entry.iterdir()} == {0o640}
