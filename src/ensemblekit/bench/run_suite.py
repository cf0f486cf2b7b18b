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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ensemblekit.bench.executors import SuiteTask, check_executor, connect_ray, run_tasks
from ensemblekit.bench.suite import Suite, SuiteRun, load_suite, select_runs
from ensemblekit.bench.suite_status import assemble_status, has_entries, read_status, run_dir_of, write_status
from ensemblekit.bench.suite_task import run_one
from ensemblekit.errors import UserError
from ensemblekit.runs.lock import LOCK_NAME, run_lock

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
    from ensemblekit.training.steps import TrainingInterrupted

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
