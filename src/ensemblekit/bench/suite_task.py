"""One (run, seed) task of a suite: fit its budget, train it into its run directory, evaluate what the suite asks.

:func:`run_one` is what every executor (:mod:`ensemblekit.bench.executors`) calls, in this process, in a local
worker process or in a Ray task; it returns the task's entry of ``suite.json``.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from ensemblekit.bench.budget import RecipeCost, equal_flops_width, fit_epochs
from ensemblekit.bench.suite import Suite, SuiteRun
from ensemblekit.bench.suite_status import run_dir_of
from ensemblekit.errors import UserError
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs.directory import checkpoint_path, holds_run, read_run_config


def _same_config(run_dir: Path, raw: dict[str, Any]) -> bool:
    from ensemblekit.runs import same_run

    return same_run(read_run_config(run_dir), config_from_dict(raw))


def _recipe_cost(raw: dict[str, Any], unit: str = "epoch_equivalents") -> RecipeCost:
    from ensemblekit.runs import load_run_data

    data = load_run_data(config_from_dict(raw))
    return RecipeCost(raw, data.num_classes, len(data.train.labels), tuple(data.train.images.shape[1:]), unit)


def _fit(raw: dict[str, Any], budget: float | None, unit: str = "epoch_equivalents") -> tuple[dict[str, Any], Any]:
    """Set ``train.epochs`` so that the recipe costs about ``budget`` (in ``unit``)."""
    if budget is None:
        return raw, None
    epochs, estimate = fit_epochs(_recipe_cost(raw, unit), budget)
    raw.setdefault("train", {})["epochs"] = epochs
    return raw, estimate


def _control_config(suite: Suite, run: SuiteRun, seed: int, budget: float | None) -> tuple[dict, float | None, dict]:
    """The equal-FLOPs control of ``run``: the base config's single network with the width of equal inference FLOPs.

    An epoch-equivalent is one epoch of the base backbone, but the control's cost meter counts epochs of its own
    (narrower or wider) backbone, so an epoch-equivalent budget B is B / a of the control's units, a being its
    FLOPs relative to the base backbone. A seconds budget is the same for both.
    """
    cost = _recipe_cost(suite.run_config(run, seed))
    target = cost.inference_flops_ratio()
    raw = suite.run_config(suite.control_run(run), seed)
    width, achieved = equal_flops_width(raw, cost.num_classes, target, tuple(cost.x.shape[1:]))
    raw.setdefault("model", {})["width"] = width
    info = {"control_of": run.name, "width": width, "flops_target": target, "flops_vs_base": achieved}
    if budget is not None and suite.budget_unit == "epoch_equivalents":
        budget = budget / achieved
    return raw, budget, info


def run_one(
    suite: Suite,
    run: SuiteRun,
    seed: int,
    out: Path,
    *,
    quiet: bool,
    progress: str,
    control_of: SuiteRun | None = None,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Train one run and seed (or skip it when finished); return its status entry.

    With ``control_of``, ``run`` is the equal-FLOPs control of that run (:func:`_control_config`).
    ``num_threads`` sets ``runtime.num_threads`` where the config leaves it unset (concurrent tasks).
    """
    from ensemblekit.runs import train
    from ensemblekit.training.steps import TrainingInterrupted

    run_dir = run_dir_of(out, run.name, seed)
    budget = suite.run_budget(run)
    entry: dict[str, Any] = {
        "run": run.name,
        "seed": seed,
        "dir": str(run_dir.relative_to(out)),
        "budget": budget,
        "budget_unit": suite.budget_unit,
    }
    try:
        raw, fit_budget = suite.run_config(run, seed), budget
        if control_of is not None:
            raw, fit_budget, info = _control_config(suite, control_of, seed, budget)
            entry.update(info)
        raw, estimate = _fit(raw, fit_budget, suite.budget_unit)
        if num_threads is not None and raw.setdefault("runtime", {}).get("num_threads") is None:
            raw["runtime"]["num_threads"] = num_threads
    except UserError as exc:
        return {**entry, "state": "failed", "error": f"budget: {exc}"}
    key = "estimated_seconds" if suite.budget_unit == "seconds" else "estimated_epoch_equivalents"
    entry.update({"epochs": raw["train"].get("epochs"), key: estimate})
    if (run_dir / "metrics.json").is_file():
        if not _same_config(run_dir, raw):
            return {**entry, "state": "failed", "error": f"{run_dir} holds a finished run of another config"}
        return _with_corruptions(suite, run_dir, {**entry, "state": "done", "skipped": True})
    resume = checkpoint_path(run_dir).is_file() and (run_dir / "config.yaml").is_file()
    if resume and not _same_config(run_dir, raw):
        return {**entry, "state": "failed", "error": f"{run_dir} holds an unfinished run of another config"}
    t0 = time.perf_counter()
    try:
        train(
            config_from_dict(raw),
            run_dir,
            resume=resume,
            overwrite=not resume and run_dir.is_dir() and holds_run(run_dir),
            quiet=quiet,
            progress=progress,
        )
    except TrainingInterrupted:
        raise
    except UserError as exc:
        return {**entry, "state": "failed", "error": str(exc)}
    except Exception as exc:  # a bug in one method must not stop the suite: record it and go on
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {**entry, "state": "failed", "error": f"{exc.__class__.__name__}: {first} (see error.txt)"}
    return _with_corruptions(suite, run_dir, {**entry, "state": "done", "seconds": time.perf_counter() - t0})


def _with_corruptions(suite: Suite, run_dir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Evaluate a finished run on the suite's corruptions (and interpolation) unless already done."""
    entry = _with_interpolation(suite, run_dir, entry)
    spec = suite.corruptions
    if spec is None or (run_dir / "corruptions.json").is_file():
        return entry
    from ensemblekit.evaluation import evaluate_robustness

    t0 = time.perf_counter()
    try:
        evaluate_robustness(
            run_dir,
            corruptions=spec.names,
            severities=spec.severities,
            seed=spec.seed,
            max_corrupted_images=spec.max_images,
            precision=spec.precision,
        )
    except UserError as exc:
        return {**entry, "corruption_error": str(exc)}
    return {**entry, "corruption_seconds": time.perf_counter() - t0}


def _with_interpolation(suite: Suite, run_dir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """The member 0 -> 1 interpolation curve (interpolation.json) of runs whose ensemble supports it."""
    points = suite.interpolation_points
    if points is None or (run_dir / "interpolation.json").is_file():
        return entry
    from ensemblekit.runs import interpolate

    try:
        interpolate(run_dir, 0, 1, points)
    except UserError as exc:  # single members, shared-parameter ensembles, heterogeneous members
        return {**entry, "interpolation": f"not available: {exc}"}
    return entry
