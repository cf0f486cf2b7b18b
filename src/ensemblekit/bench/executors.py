"""Where the (run, seed) tasks of a suite run: in this process, in N local processes, or as Ray tasks.

``ensemblekit bench SUITE --out DIR --executor NAME``:

* ``sequential`` (default): one task after another in the ``bench`` process, with progress output.
* ``local --jobs N``: N tasks at once on this machine, each in a worker process (``spawn``, no Ray). A task whose
  config leaves ``runtime.num_threads`` unset gets ``cpu_count // N`` threads, so N tasks do not oversubscribe
  the cores; runs on GPUs get ``runtime.devices`` GPUs of their own per worker (``CUDA_VISIBLE_DEVICES``).
* ``ray [--address ADDR]``: every task is a Ray task asking for what it needs: ``runtime.devices`` GPUs when the
  run trains on a GPU (``runtime.accelerator`` cuda/gpu, or auto on a cluster that has GPUs), else
  ``runtime.num_threads`` CPUs (1 when unset). Without ``--address`` Ray starts a local instance for the suite;
  with it (or ``auto``) the tasks go to an existing cluster, whose nodes must see ``--out`` at the same path (a
  shared file system) and have ensemblekit installed.

Every task writes its own state next to its run directory (:mod:`ensemblekit.bench.suite_status`), so the
executors share nothing but the file system. An executor yields ``(task, entry)`` as tasks finish; a task that
raised or whose process died becomes a ``failed`` entry and the suite goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ensemblekit.bench.suite import Suite, SuiteRun
from ensemblekit.bench.suite_status import read_entry, write_entry
from ensemblekit.bench.suite_task import run_one
from ensemblekit.errors import UserError, one_line

EXECUTORS = ("sequential", "local", "ray")


@dataclass(frozen=True)
class SuiteTask:
    """One run and seed of a suite (``control_of``: the run whose equal-FLOPs control this is)."""

    suite: Suite
    run: SuiteRun
    seed: int
    out: Path
    control_of: SuiteRun | None = None
    quiet: bool = False
    progress: str = "auto"
    num_threads: int | None = None  # runtime.num_threads where the run's config leaves it unset

    @property
    def key(self) -> str:
        return f"{self.run.name}/seed{self.seed}"

    def entry(self, state: str, **fields: Any) -> dict[str, Any]:
        """A minimal entry of this task (for states recorded without a result from ``run_one``)."""
        return {"run": self.run.name, "seed": self.seed, "dir": f"runs/{self.run.name}/seed{self.seed}",
                "state": state, **fields}  # fmt: skip


def execute_task(task: SuiteTask) -> dict[str, Any]:
    """Run one task in this process and record its entry next to its run directory; return the entry.

    Raises:
        TrainingInterrupted: Ctrl-C; the entry says ``interrupted`` and the run's checkpoint was saved.
    """
    from ensemblekit.training.steps import TrainingInterrupted

    try:
        entry = run_one(task.suite, task.run, task.seed, task.out, quiet=task.quiet, progress=task.progress,
                        control_of=task.control_of, num_threads=task.num_threads)  # fmt: skip
    except TrainingInterrupted:
        write_entry(task.out, task.entry("interrupted"))
        raise
    write_entry(task.out, entry)
    return entry


def _died(task: SuiteTask, exc: BaseException, where: str) -> dict[str, Any]:
    """The entry of a task that returned no entry (its process died, or the executor failed it)."""
    from ensemblekit.training.steps import TrainingInterrupted

    if isinstance(exc, TrainingInterrupted):
        return read_entry(task.out, task.run.name, task.seed) or task.entry("interrupted")
    error = f"{where}: {exc.__class__.__name__}: {one_line(str(exc), 300)}"
    if exc.__class__.__name__ == "BrokenProcessPool":
        error = (f"{where} died (killed, out of memory, or a calling script without an "
                 f"`if __name__ == '__main__':` guard, which spawned workers need); --resume retries it")  # fmt: skip
    entry = task.entry("failed", error=error)
    write_entry(task.out, entry)
    return entry


def run_sequential(tasks: list[SuiteTask], say: Callable[[str], None]) -> Iterator[tuple[SuiteTask, dict]]:
    """Each task in this process, in order (``TrainingInterrupted`` stops the suite)."""
    for k, task in enumerate(tasks, 1):
        say(f"[{k}/{len(tasks)}] {task.run.name} seed {task.seed}")
        yield task, execute_task(task)


def threads_per_task(jobs: int) -> int:
    """CPU threads for each of ``jobs`` concurrent tasks on this machine."""
    return max(1, (os.cpu_count() or 1) // jobs)


def gpu_slices(tasks: list[SuiteTask], jobs: int, visible: list[str]) -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` of each of ``jobs`` local workers when the tasks train on GPUs (else ``None``).

    Worker k gets GPUs ``k*d .. k*d + d - 1`` of ``visible`` (this process's GPUs), d being the most GPUs a task
    asks for (``runtime.devices``), so concurrent runs never share a GPU.
    """
    per_task = max(int(task_resources(t.suite.run_config(t.run, t.seed), len(visible))[1]) for t in tasks)
    if per_task == 0:
        return None
    if jobs * per_task > len(visible):
        raise UserError(
            f"--jobs {jobs} runs of {per_task} GPU(s) each need {jobs * per_task} GPUs; this machine has "
            f"{len(visible)}: lower --jobs"
        )
    return [",".join(visible[k * per_task : (k + 1) * per_task]) for k in range(jobs)]


def visible_gpus() -> list[str]:
    """This process's GPUs as ``CUDA_VISIBLE_DEVICES`` entries (as set by the user or Slurm, else all)."""
    import torch

    count = torch.cuda.device_count()
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None and given.strip():
        return [d.strip() for d in given.split(",") if d.strip()][:count]
    return [str(k) for k in range(count)]


def _init_worker(threads: int, gpus=None) -> None:
    """A worker's threads and, from the queue ``gpus`` of :func:`gpu_slices`, its own GPUs."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus.get()  # before CUDA is initialised in this process
    import torch

    torch.set_num_threads(threads)


def run_local(tasks: list[SuiteTask], jobs: int) -> Iterator[tuple[SuiteTask, dict]]:
    """``jobs`` tasks at once in spawned worker processes of this machine, each with its own GPUs (if any).

    Called from a script, the script needs an ``if __name__ == "__main__":`` guard (spawned workers import it).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = threads_per_task(jobs)
    tasks = [_with_threads(t, threads) for t in tasks]
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    slices = gpu_slices(tasks, jobs, visible_gpus()) if tasks else None
    queue = None
    if slices is not None:
        queue = context.Queue()
        for devices in slices:
            queue.put(devices)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                               initargs=(threads, queue))  # fmt: skip
    try:
        futures = {pool.submit(execute_task, t): t for t in tasks}
        for future in as_completed(futures):
            task = futures[future]
            try:
                entry = future.result()
            except Exception as exc:  # a worker that died (killed, out of memory) breaks the pool: see --resume
                entry = _died(task, exc, "local worker")
            yield task, entry
    except BaseException:  # Ctrl-C (the workers save checkpoints) or the caller stopped: start no further task
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _with_threads(task: SuiteTask, threads: int) -> SuiteTask:
    return replace(task, quiet=True, num_threads=task.num_threads or threads)


def _device_count(devices: int | str) -> int:
    if isinstance(devices, int):
        return devices
    parts = [p for p in devices.replace(" ", "").split(",") if p]
    if len(parts) > 1 or (parts and parts[0].startswith("[")):
        return len(parts)
    if parts and parts[0].isdigit():
        return int(parts[0])
    raise UserError(f"--executor ray needs a number of devices per run, not runtime.devices={devices!r}")


def task_resources(raw: dict[str, Any], cluster_gpus: float) -> tuple[float, float]:
    """``(num_cpus, num_gpus)`` a run asks Ray for, from its config's ``runtime`` section (module docstring)."""
    from ensemblekit.resolve import config_from_dict

    rt = config_from_dict(raw).runtime
    devices = _device_count(rt.devices) * rt.num_nodes
    on_gpu = rt.accelerator in ("cuda", "gpu") or (rt.accelerator == "auto" and cluster_gpus > 0)
    threads = rt.num_threads or 1
    if on_gpu:
        return float(threads), float(devices)
    return float(threads * devices), 0.0


def _ray_task(task: SuiteTask, cwd: str, threads: int) -> dict[str, Any]:
    """A task on a Ray worker, in the driver's working directory and with its threads.

    The directory makes the suite's relative paths work, and ``model.factory`` modules found there as by ``python -m``.
    """
    import sys

    if os.path.isdir(cwd):
        os.chdir(cwd)
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
    _init_worker(threads)
    return execute_task(task)


def _check_reachable(address: str) -> None:
    """Refuse a ``host:port`` address nothing listens on (Ray itself would wait for minutes)."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return  # "auto", a bare host name...: Ray resolves those
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def connect_ray(address: str | None) -> bool:
    """Start a local Ray instance, or connect to the cluster at ``address``; return whether this call did it.

    Nothing is done when Ray is already initialised in this process (the caller's ``ray.init``).
    """
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'ensemblekit[ray]'") from None
    if ray.is_initialized():
        return False
    import logging

    if address is not None and address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UserError(f"cannot start or reach {where}: {one_line(str(exc), 200)}") from None
    return True


def run_ray(tasks: list[SuiteTask]) -> Iterator[tuple[SuiteTask, dict]]:
    """Each task as a Ray task, on the Ray instance or cluster :func:`connect_ray` connected to."""
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))
    remote = ray.remote(_ray_task)
    refs = {}
    for task in tasks:
        cpus, n_gpus = task_resources(task.suite.run_config(task.run, task.seed), gpus)
        task = replace(task, quiet=True, num_threads=task.num_threads or int(cpus))
        ref = remote.options(num_cpus=cpus, num_gpus=n_gpus, max_retries=0).remote(task, os.getcwd(), int(cpus))
        refs[ref] = task
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            task = refs[done[0]]
            try:
                entry = ray.get(done[0])
            except Exception as exc:  # RayTaskError subclasses the task's exception; a dead worker too
                entry = _died(task, exc, "ray task")
            yield task, entry
    except BaseException:  # Ctrl-C or the caller stopped: cancel what has not finished
        for ref in pending:
            ray.cancel(ref)
        raise


def run_tasks(
    tasks: list[SuiteTask], executor: str, *, jobs: int | None, address: str | None, say: Callable[[str], None]
) -> Iterator[tuple[SuiteTask, dict]]:
    """The ``(task, entry)`` pairs of ``tasks`` run by ``executor``, as they finish."""
    check_executor(executor, jobs, address)
    if executor == "sequential":
        return run_sequential(tasks, say)
    if executor == "local":
        return run_local(tasks, jobs or 1)
    return run_ray(tasks)


def check_executor(executor: str, jobs: int | None, address: str | None) -> None:
    """Refuse options that do not belong to ``executor`` (one line)."""
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if jobs is not None and executor != "local":
        raise UserError("--jobs is for --executor local (Ray schedules by the runs' resources)")
    if jobs is not None and not 1 <= jobs <= 1024:
        raise UserError(f"--jobs must be between 1 and 1024, got {jobs}")
    if address is not None and executor != "ray":
        raise UserError("--address is for --executor ray")
