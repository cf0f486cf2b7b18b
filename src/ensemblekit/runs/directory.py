"""Run directories: what ``ensemblekit train`` writes and how it is read back.

Layout::

    RUN_DIR/config.yaml          fully resolved config + versions and git commit (under ``meta``)
    RUN_DIR/log.csv              one row per epoch
    RUN_DIR/steps.csv            per-step loss and learning rate (every ``runtime.log_every_steps`` steps)
    RUN_DIR/tensorboard/         TensorBoard event files (``runtime.logger: tensorboard``)
    RUN_DIR/events.jsonl         train start/end, stage starts/ends, resume, evaluate
    RUN_DIR/checkpoints/last.pt  written atomically at the end of every epoch
    RUN_DIR/model.pt             final ensemble weights
    RUN_DIR/metrics.json         metrics, per-member metrics and costs
    RUN_DIR/eval.json            written by ``ensemblekit evaluate``
    RUN_DIR/interpolation.json   written by ``ensemblekit interpolate``
    RUN_DIR/corruptions.json     written by ``ensemblekit evaluate --corruptions``
    RUN_DIR/ood.json             written by ``ensemblekit evaluate --ood``
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from ensemblekit.atomic import atomic_write_bytes, temp_name_pattern
from ensemblekit.config import Config, config_to_dict, read_yaml
from ensemblekit.errors import UserError, one_line
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs.lock import LOCK_NAME

RUN_FILES = (
    "config.yaml",
    "log.csv",
    "steps.csv",
    "tensorboard",
    "events.jsonl",
    "checkpoints",
    "ranks",  # member-parallel training: each process's logs of the running wave
    "model.pt",
    "metrics.json",
    "eval.json",
    "interpolation.json",
    "corruptions.json",
    "ood.json",
    "error.txt",
)


def checkpoint_path(run_dir: Path) -> Path:
    """Path of the run's resumable checkpoint."""
    return run_dir / "checkpoints" / "last.pt"


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds (part of) an ensemblekit run (an empty ``checkpoints/`` does not count)."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir() and not any(path.iterdir()):
            continue
        if path.exists():
            return True
    return False


def litter(run_dir: Path) -> list[Path]:
    """Ensemblekit's own leftovers in ``run_dir``: the writer lock and temporary files of interrupted writes.

    A kill during an atomic write leaves ``.<name>.<random>.tmp`` beside ``<name>`` (never a partial
    ``<name>``); these are safe to delete by whoever holds the run's lock.
    """
    found = [p for p in (run_dir / LOCK_NAME,) if p.is_file()]
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.is_dir():
            for name in (*RUN_FILES, "last.pt", "rank*.pt"):
                found += [p for p in folder.glob(temp_name_pattern(name)) if p.is_file()]
    return found


def remove_orphan_temp_files(run_dir: Path) -> int:
    """Delete the temporary files of interrupted atomic writes in ``run_dir`` (call it holding the lock)."""
    orphans = [p for p in litter(run_dir) if p.name != LOCK_NAME]
    for p in orphans:
        p.unlink(missing_ok=True)
    return len(orphans)


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> bool:
    """Check and create the output directory; never touch an existing run unless told to.

    Call it holding the run's lock (:func:`~ensemblekit.runs.lock.run_lock`). Temporary files of interrupted
    writes are removed; a folder holding nothing but such leftovers counts as empty.

    Returns:
        Whether there is a checkpoint to resume from (``resume`` of a run killed before its first checkpoint
        starts it again from its saved config).

    Raises:
        UserError: the directory holds another run and neither ``resume`` nor ``overwrite`` is set; it holds
            unrelated files; or ``resume`` is set but there is nothing to resume.
    """
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output path exists and is not a directory: {run_dir}")
    if run_dir.is_dir():
        remove_orphan_temp_files(run_dir)
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"nothing to resume in {run_dir}: no config.yaml (start it without --resume)")
        return checkpoint_path(run_dir).is_file()
    if run_dir.is_dir() and holds_run(run_dir):
        if not overwrite:
            raise UserError(
                f"{run_dir} already holds a run; use --resume to continue it, --overwrite to replace it, "
                f"or another --out"
            )
        for name in RUN_FILES:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    elif run_dir.is_dir() and any(p.name != LOCK_NAME and p.name not in RUN_FILES for p in run_dir.iterdir()):
        raise UserError(f"output directory {run_dir} is not empty and holds no run; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return False


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_meta() -> dict[str, Any]:
    """Package versions, git commit, host platform and time, stored with every run."""
    import lightning
    import numpy
    import torch

    import ensemblekit

    return {
        "ensemblekit": ensemblekit.__version__,
        "torch": str(torch.__version__),
        "lightning": str(lightning.__version__),
        "numpy": str(numpy.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_run_config(run_dir: Path, cfg: Config) -> None:
    """Write the resolved config with ``meta`` (versions, commit) to ``config.yaml``."""
    data = config_to_dict(cfg)
    data["meta"] = run_meta()
    text = yaml.safe_dump(data, sort_keys=False)
    atomic_write_bytes(run_dir / "config.yaml", lambda f: f.write(text.encode()))


def read_run_config(run_dir: Path) -> Config:
    """The resolved config of a run directory."""
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    return config_from_dict(read_yaml(path))


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """The ``metrics.json`` of a finished run."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.json (the run has not finished)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: JSON and UTF-8 decoding errors
        raise UserError(f"cannot read {path}: {one_line(exc, 160)}") from None
    if not isinstance(record, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return record
