"""Robustness and uncertainty evaluation of finished runs: corruptions (CIFAR-10-C style) and OOD detection.

``ensemblekit evaluate RUN --corruptions [NAMES|all] [--severities 1-5] --ood DATASET`` calls
:func:`evaluate_robustness`, which writes ``corruptions.json`` and ``ood.json`` into the run directory and
adds their summaries to ``eval.json`` (keys ``corruptions`` and ``ood``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ensemblekit.atomic import write_json
from ensemblekit.data.corruptions import resolve_corruptions
from ensemblekit.evaluation.corrupted import evaluate_corruptions
from ensemblekit.evaluation.ood import evaluate_ood, load_ood_split, subset_split
from ensemblekit.runs.loading import LoadedRun, load_run
from ensemblekit.runs.lock import run_lock


def evaluate_robustness(run_dir: str | Path, **options: Any) -> dict[str, Any]:
    """Run the requested robustness evaluations holding the run's writer lock (see :func:`robustness_results`)."""
    with run_lock(run_dir, "evaluate"):
        return robustness_results(run_dir, **options)


def robustness_results(
    run_dir: str | Path,
    *,
    corruptions: list[str] | None = None,
    severities: list[int] | None = None,
    ood: list[str] | None = None,
    seed: int = 0,
    max_ood_images: int | None = None,
    max_corrupted_images: int | None = None,
    batch_size: int | None = None,
    precision: str = "32",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the requested evaluations on a finished run and write their JSON files.

    Args:
        run_dir: The run directory (with ``config.yaml`` and ``model.pt``).
        corruptions: Corruption names (``"all"``/``"extra"`` expand), or ``None`` to skip corruptions.
        severities: Severities to evaluate (default 1..5).
        ood: OOD specs (see :mod:`ensemblekit.evaluation.ood`), or ``None`` to skip OOD detection.
        seed: Seed of the corruptions.
        max_ood_images: Cap on the images of each OOD set (seeded stratified subset).
        max_corrupted_images: Evaluate corruptions on a seeded stratified subset of this many test images (a
            cheaper estimate of the same protocol; the number used is recorded as ``num_images``).
        batch_size: Evaluation batch size (default: the run's ``data.eval_batch_size``).
        precision: ``"32"`` or ``"bf16"`` (forward passes under bfloat16 autocast: faster on CPUs with
            AVX512-BF16 and on GPUs; metrics may differ slightly from float32).
        progress: Called with one line per finished corruption.

    Returns:
        ``{"corruptions": ..., "ood": ...}`` with the records written (keys absent when not requested).
    """
    names = resolve_corruptions(corruptions) if corruptions is not None else None  # bad names fail before loading
    run_dir = Path(run_dir)
    run = load_run(run_dir, batch_size)
    run.precision = precision
    meta = {
        "run": str(run_dir),
        "method": run.cfg.method.name,
        "num_members": run.ensemble.num_members,
        "precision": precision,
    }
    out: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    if names is not None:
        split = subset_split(run.data.test, max_corrupted_images, seed)
        cells = evaluate_corruptions(
            run, names, severities or [1, 2, 3, 4, 5], seed=seed, split=split, progress=progress
        )
        record = {**meta, **cells}
        write_json(run_dir / "corruptions.json", record)
        out["corruptions"] = record
        summary["corruptions"] = {k: record[k] for k in ("mean", "per_severity", "clean", "corruptions", "seed")}
    if ood:
        record = {**meta, **evaluate_ood(run, list(dict.fromkeys(ood)), max_ood_images)}
        write_json(run_dir / "ood.json", record)
        out["ood"] = record
        summary["ood"] = {spec: {s: r[s] for s in record["scores"]} for spec, r in record["results"].items()}
    eval_path = run_dir / "eval.json"
    if summary and eval_path.is_file():
        try:
            existing = json.loads(eval_path.read_text())
        except (OSError, ValueError):
            existing = None
        if isinstance(existing, dict):
            write_json(eval_path, {**existing, **summary})
    return out


__all__ = ["LoadedRun", "evaluate_corruptions", "evaluate_ood", "evaluate_robustness", "load_ood_split", "load_run"]
