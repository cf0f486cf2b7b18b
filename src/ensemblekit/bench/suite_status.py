"""The state of a suite lives with its runs: one small entry file per run and seed, ``suite.json`` built from them.

Every (run, seed) task writes its own entry (state ``done`` / ``failed`` / ``interrupted``, the fitted
``train.epochs``, the budget, the error line of a failure...) to ``OUT/runs/<run>/seed<k>.suite.json``, beside
its run directory ``OUT/runs/<run>/seed<k>/``. No file is written by two tasks, so tasks may run in any number of
processes or machines at once (:mod:`ensemblekit.bench.executors`). ``OUT/suite.json`` is assembled from the
entries by the ``bench`` process alone (it holds the suite folder's lock, :mod:`ensemblekit.runs.lock`), after
every task and at the end; it is a summary that can always be rebuilt from the run entries.

A suite written before entries existed has only ``suite.json``: its entries are kept for runs that have no entry
file (:func:`assemble_status`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ensemblekit.atomic import atomic_write_bytes
from ensemblekit.errors import UserError

ENTRY_SUFFIX = ".suite.json"


def run_dir_of(out: Path, run: str, seed: int) -> Path:
    """Where run ``run`` with seed ``seed`` of a suite lives."""
    return out / "runs" / run / f"seed{seed}"


def entry_path(out: Path, run: str, seed: int) -> Path:
    """The entry file of run ``run``, seed ``seed``: beside its run directory."""
    return out / "runs" / run / f"seed{seed}{ENTRY_SUFFIX}"


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, lambda f: f.write(json.dumps(content, indent=2).encode()))


def write_entry(out: Path, entry: dict[str, Any]) -> None:
    """Record one task's entry (written only by the task itself, or by the executor when the task died)."""
    _write_json(entry_path(out, entry["run"], entry["seed"]), entry)


def read_entry(out: Path, run: str, seed: int) -> dict[str, Any] | None:
    """The entry of run ``run``, seed ``seed`` (``None`` when it has none or it is unreadable)."""
    try:
        return json.loads(entry_path(out, run, seed).read_text())
    except (OSError, ValueError):
        return None


def has_entries(out: Path) -> bool:
    """Whether ``out`` holds any run entry of a suite."""
    return next((out / "runs").glob(f"*/seed*{ENTRY_SUFFIX}"), None) is not None


def _entries(out: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted((out / "runs").glob(f"*/seed*{ENTRY_SUFFIX}")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(entry, dict) and "run" in entry and "seed" in entry:
            found.append(entry)
    return found


def read_status(out: Path) -> dict[str, Any]:
    """The ``suite.json`` of a suite output directory."""
    path = out / "suite.json"
    if not path.is_file():
        raise UserError(f"{out} is not a suite output directory (no suite.json); run ensemblekit bench first")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"cannot read {path}: not a suite.json (rebuild it with ensemblekit bench --resume)") from None


def assemble_status(out: Path, header: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """``suite.json``'s content: ``header`` (suite, order, description) and every run entry, in the suite's order.

    ``previous`` (an older ``suite.json``) supplies the entries of runs that have no entry file.
    """
    runs: dict[str, dict[str, Any]] = {}
    for entry in (previous or {}).get("runs", {}).values():
        runs[f"{entry['run']}/seed{entry['seed']}"] = entry
    for entry in _entries(out):
        runs[f"{entry['run']}/seed{entry['seed']}"] = entry
    order = {name: i for i, name in enumerate(header.get("order", []))}
    keys = sorted(runs, key=lambda k: (order.get(runs[k]["run"], 1 << 30), runs[k]["run"], runs[k]["seed"]))
    return {**header, "runs": {k: runs[k] for k in keys}}


def write_status(out: Path, status: dict[str, Any]) -> None:
    """Write ``suite.json`` (only the ``bench`` process holding the suite lock calls this)."""
    _write_json(out / "suite.json", status)
