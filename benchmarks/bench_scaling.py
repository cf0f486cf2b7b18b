"""Scaling out, as ratios measured in one run (compare, don't quote absolute times).

1. Member-parallel training of one run (``runtime.parallel: members``): a 4-member tiny deep ensemble trained
   sequentially (1 process x 2 threads) vs member-parallel (2 processes x 1 thread).
   TODO(issue 16, item 1): not implemented yet; this part is skipped until ``runtime.parallel`` exists.
2. A suite of 4 tiny runs: ``bench`` with the sequential executor (1 process x 2 threads, and x 1 thread)
   vs ``--executor local --jobs 2`` (2 processes x 1 thread) vs ``--executor ray`` on a local Ray instance
   with 2 CPUs (2 workers x 1 thread; Ray's start-up is reported apart). Speed-up = the sequential executor's
   (2 threads) wall time / the other's. The parallel executors' times include starting their worker
   processes (torch imports); the sequential one's imports are paid before timing.

Usage: python benchmarks/bench_scaling.py [--train-size 2048] [--budget 3]
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml

from ensemblekit.bench.run_suite import run_suite
from ensemblekit.config import RuntimeConfig


def member_parallel() -> None:
    if "parallel" not in RuntimeConfig.model_fields:
        print("1. member-parallel training: skipped (runtime.parallel: members is not implemented yet, issue 16)")
        return
    print("1. member-parallel training: TODO (issue 16 item 1 adds this measurement)")


def suite_file(folder: Path, train_size: int, budget: float) -> Path:
    base = {
        "data": {"name": "synthetic", "train_size": train_size, "test_size": 128, "batch_size": 64},
        "model": {"name": "resnet8", "width": 0.25},
        "train": {"lr": 0.05, "schedule": "cosine"},
        "runtime": {"accelerator": "cpu"},  # num_threads unset: the executor decides (2 here, 1 per worker there)
    }
    runs = [{"name": f"single{k}", "method": {"name": "single"}, "set": {"train.seed": k}} for k in range(4)]
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "scaling", "base": base, "budget": budget, "runs": runs}))
    return path


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def suite_executors(train_size: int, budget: float) -> None:
    quiet = {"quiet": True, "say": lambda _: None}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        suite = suite_file(tmp, train_size, budget)
        importlib.import_module("ensemblekit.runs")  # imports (Lightning...) are paid before timing

        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        seq = timed(lambda: run_suite(suite, tmp / "sequential", **quiet))
        torch.set_num_threads(1)
        seq1 = timed(lambda: run_suite(suite, tmp / "sequential1", **quiet))
        torch.set_num_threads(threads)
        local = timed(lambda: run_suite(suite, tmp / "local", executor="local", jobs=2, **quiet))
        try:
            import ray
        except ImportError:
            ray = None
        if ray is not None:
            start = timed(lambda: ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False))
            try:
                on_ray = timed(lambda: run_suite(suite, tmp / "ray", executor="ray", **quiet))
            finally:
                ray.shutdown()
    print(f"2. suite of 4 tiny runs (resnet8 x0.25, {train_size} images, {budget:g} epochs each); "
          f"{os.cpu_count()} CPU cores")  # fmt: skip
    print(f"   sequential, 1 process x 2 threads:  {seq:7.1f} s   speed-up 1.00")
    print(f"   sequential, 1 process x 1 thread:   {seq1:7.1f} s   speed-up {seq / seq1:.2f}")
    print(f"   local --jobs 2, 2 x 1 thread:       {local:7.1f} s   speed-up {seq / local:.2f}")
    if ray is None:
        print("   ray: skipped (pip install 'ensemblekit[ray]')")
    else:
        print(f"   ray, 2 workers x 1 thread:          {on_ray:7.1f} s   speed-up {seq / on_ray:.2f}"
              f"   (+ {start:.1f} s to start Ray)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=2048, help="synthetic training images per run")
    parser.add_argument("--budget", type=float, default=3, help="epochs per run")
    args = parser.parse_args()
    member_parallel()
    suite_executors(args.train_size, args.budget)


if __name__ == "__main__":
    main()
