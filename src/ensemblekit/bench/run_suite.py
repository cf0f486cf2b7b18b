"""``ensemblekit bench``: train every run of a suite into ordinary run directories, then write the results.

Layout of the output directory::

    OUT/suite.yaml                 the suite as last given
    OUT/suite.json                 per run and seed: state (done / failed / interrupted), the fitted
                                   train.epochs, the estimated epoch-equivalents, the error line of a failure;
                                   assembled from the runs' entries (ensemblekit.bench.suite_status)
    OUT/runs/<run>/seed<k>/        one ordinary run directory per run and seed (ensemblekit train); an equal-FLOPs
                                   control of run <run> (``equal_flops_control``) is run <run>.control
    OUT/runs/<run>/seed<k>.suite.json   that run's entry of suite.json, written by the task that ran it
    OUT/results.csv, results.md    generated from the run directories (ensemblekit.bench.results)
    OUT/plots/*.png|svg            (ensemblekit.bench.plots)
    OUT/report.html, report.md     (ensemblekit.bench.report)

The tasks run one after another in this process, in N local processes or as Ray tasks
(:mod:`ensemblekit.bench.executors`). A failed run is recorded and the suite goes on; ``--resume`` (with any
executor) skips finished runs, continues interrupted ones from their checkpoints and retries failed ones.
A finished run whose config no longer matches the suite is reported, never silently reused or overwritten.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ensemblekit.bench.budget import RecipeCost, equal_flops_width, fit_epochs
from ensemblekit.bench.executors import SuiteTask, check_executor, connect_ray, run_tasks
from ensemblekit.bench.suite import Suite, SuiteRun, load_suite, select_runs
from ensemblekit.bench.suite_status import assemble_status, has_entries, read_status, run_dir_of, write_status
from ensemblekit.errors import UserError
from ensemblekit.resolve import config_from_dict
from ensemblekit.run_dir import checkpoint_path, holds_run, read_run_config
from ensemblekit.run_lock import LOCK_NAME, run_lock

__all__ = ["read_status", "run_dir_of", "run_one", "run_suite"]


def prepare_out(out: Path, suite_path: Path, resume: bool) -> dict[str, Any]:
    """Create (or, with ``resume``, reopen) the suite output directory; never clobber anything."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    has_status = (out / "suite.json").is_file()
    has_suite = has_status or has_entries(out)  # suite.json can be rebuilt from the runs' entries
    if has_suite and not resume:
        raise UserError(f"{out} already holds a suite's results; use --resume to continue it, or another --out")
    if out.is_dir() and not has_suite and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise UserError(f"--out {out} is not empty and holds no suite; choose an empty or new directory")
    out.mkdir(parents=True, exist_ok=True)
    status = read_status(out) if has_status else {"suite": None, "order": [], "runs": {}}
    shutil.copyfile(suite_path, out / "suite.yaml")  # the suite as last given
    return status


def _same_config(run_dir: Path, raw: dict[str, Any]) -> bool:
    from ensemblekit.runner import _same_run

    return _same_run(read_run_config(run_dir), config_from_dict(raw))


def _recipe_cost(raw: dict[str, Any], unit: str = "epoch_equivalents") -> RecipeCost:
    from ensemblekit.runner import load_run_data

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
    from ensemblekit.runner import train
    from ensemblekit.training.engine import TrainingInterrupted

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
    from ensemblekit.runner import interpolate

    try:
        interpolate(run_dir, 0, 1, points)
    except UserError as exc:  # single members, shared-parameter ensembles, heterogeneous members
        return {**entry, "interpolation": f"not available: {exc}"}
    return entry


def _with_controls(suite: Suite, runs: list[SuiteRun]) -> list[tuple[SuiteRun, SuiteRun | None]]:
    """``(run, None)`` for every run, each followed by ``(its control, run)`` where a control is asked for."""
    out = []
    for run in runs:
        out.append((run, None))
        if suite.wants_control(run):
            out.append((suite.control_run(run), run))
    return out


def _order(suite: Suite, runs: list[SuiteRun]) -> list[str]:
    return [run.name for run, _ in _with_controls(suite, runs)]


def run_suite(
    suite_path: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    only: list[str] | None = None,
    seeds: int | None = None,
    quiet: bool = False,
    progress: str = "auto",
    executor: str = "sequential",
    jobs: int | None = None,
    address: str | None = None,
    say=print,
) -> dict[str, Any]:
    """Run a suite (see the module docstring); return ``suite.json``'s content. Results are written at the end.

    ``executor``, ``jobs`` and ``address``: where the tasks run (:mod:`ensemblekit.bench.executors`).
    """
    suite_path, out = Path(suite_path), Path(out)
    check_executor(executor, jobs, address)
    suite = load_suite(suite_path)
    runs = select_runs(suite, only)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    with run_lock(out, "bench", create=True), executor_session(executor, address):  # one bench per suite folder
        previous = prepare_out(out, suite_path, resume)
        header = {"suite": suite.name, "order": _order(suite, suite.runs), "description": suite.description}
        status = assemble_status(out, header, previous)
        write_status(out, status)
        tasks = [
            SuiteTask(suite, run, seed, out.resolve(), control_of=of, quiet=quiet, progress=progress)
            for run, of in _with_controls(suite, runs)
            for seed in range(seeds or suite.seeds)
        ]
        return _run_tasks(out, header, previous, tasks, executor, jobs, address, say)


@contextlib.contextmanager
def executor_session(executor: str, address: str | None) -> Iterator[None]:
    """Connect to Ray (before anything is written) and disconnect at the end, for ``--executor ray``."""
    if executor != "ray":
        yield
        return
    started = connect_ray(address)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def _run_tasks(out, header, previous, tasks, executor, jobs, address, say) -> dict[str, Any]:
    from ensemblekit.bench.report import write_all
    from ensemblekit.training.engine import TrainingInterrupted

    interrupted = None
    try:
        for k, (task, entry) in enumerate(run_tasks(tasks, executor, jobs=jobs, address=address, say=say), 1):
            write_status(out, assemble_status(out, header, previous))
            where = "" if executor == "sequential" else f"[{k}/{len(tasks)}] {task.key}: "
            if entry["state"] == "failed":
                say(f"  {where}FAILED: {entry['error']}")
            elif entry["state"] == "interrupted":
                interrupted = interrupted or f"{task.key} was interrupted"
            elif entry.get("skipped"):
                say(f"  {where}finished earlier: skipped")
            elif where:
                say(f"  {where}done")
    except (TrainingInterrupted, KeyboardInterrupt) as exc:
        write_status(out, assemble_status(out, header, previous))
        raise TrainingInterrupted(str(exc) or "bench interrupted") from None
    status = assemble_status(out, header, previous)
    write_status(out, status)
    if interrupted:
        raise TrainingInterrupted(interrupted)
    write_all(out)
    return status
