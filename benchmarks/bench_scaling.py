"""Scaling out, as ratios measured in one run (compare, don't quote absolute times).

1. Member-parallel training of one run (``runtime.parallel: members``): a 4-member tiny deep ensemble trained
   sequentially (1 process x 2 threads, and x 1 thread) vs member-parallel (2 processes x 1 thread), each one
   ``ensemblekit train`` command. Speed-up = the sequential (2 threads) command's wall time / the other's; in
   brackets the same from the run's ``train_start`` to ``train_end`` events (without imports and process launch).
2. A suite of 4 tiny runs: ``bench`` with the sequential executor (1 process x 2 threads, and x 1 thread)
   vs ``--executor local --jobs 2`` (2 processes x 1 thread) vs ``--executor ray`` on a local Ray instance
   with 2 CPUs (2 workers x 1 thread; Ray's start-up is reported apart). Speed-up = the sequential executor's
   (2 threads) wall time / the other's. The parallel executors' times include starting their worker
   processes (torch imports); the sequential one's imports are paid before timing.

Usage: python benchmarks/bench_scaling.py [--train-size 2048] [--budget 3] [--part all|members|suite]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from ensemblekit.bench.run_suite import run_suite


def member_parallel(train_size: int, epochs: float) -> None:
    """A 4-member deep ensemble: 1 process x 2 threads vs ``runtime.parallel: members`` on 2 processes x 1 thread."""
    base = {
        "data": {"name": "synthetic", "train_size": train_size, "test_size": 128, "batch_size": 64},
        "model": {"name": "resnet8", "width": 0.25},
        "method": {"name": "deep_ensemble", "members": 4},
        "train": {"lr": 0.05, "schedule": "cosine", "epochs": max(1, round(epochs))},
    }
    setups = {
        "sequential": {"accelerator": "cpu", "num_threads": 2},
        "sequential1": {"accelerator": "cpu", "num_threads": 1},
        "members": {"accelerator": "cpu", "num_threads": 1, "devices": 2, "strategy": "ddp", "parallel": "members"},
    }
    wall, train_wall = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, runtime in setups.items():
            cfg = Path(tmp) / f"{name}.yaml"
            cfg.write_text(yaml.safe_dump({**base, "runtime": runtime}))
            out = Path(tmp) / name
            command = [sys.executable, "-m", "ensemblekit", "train", str(cfg), "--out", str(out), "--quiet"]
            t0 = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            wall[name] = time.perf_counter() - t0
            events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
            times = {e["event"]: e["time"] for e in events if e["event"] in ("train_start", "train_end")}
            train_wall[name] = times["train_end"] - times["train_start"]
    seq, par = wall["sequential"], wall["members"]
    seq_t, par_t = train_wall["sequential"], train_wall["members"]
    epochs = base["train"]["epochs"]
    print(f"1. 4-member deep ensemble (resnet8 x0.25, {train_size} images, {epochs} epochs per member); "
          f"{os.cpu_count()} CPU cores; command wall time (training + evaluation only)")  # fmt: skip
    print(f"   sequential, 1 process x 2 threads:     {seq:7.1f} s ({seq_t:6.1f} s)   speed-up 1.00")
    one, one_t = wall["sequential1"], train_wall["sequential1"]
    print(f"   sequential, 1 process x 1 thread:      {one:7.1f} s ({one_t:6.1f} s)   "
          f"speed-up {seq / one:.2f} ({seq_t / one_t:.2f})")  # fmt: skip
    print(f"   parallel: members, 2 x 1 thread:       {par:7.1f} s ({par_t:6.1f} s)   "
          f"speed-up {seq / par:.2f} ({seq_t / par_t:.2f})")  # fmt: skip


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
    parser.add_argument("--part", choices=["all", "members", "suite"], default="all", help="which measurement")
    args = parser.parse_args()
    if args.part in ("all", "members"):
        member_parallel(args.train_size, args.budget)
    if args.part in ("all", "suite"):
        suite_executors(args.train_size, args.budget)


if __name__ == "__main__":
    main()
