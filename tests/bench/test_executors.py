"""Suites across processes: the local and Ray executors give the sequential executor's results; run state per run."""

import csv
import json

import pytest
import yaml

from ensemblekit.bench.executors import task_resources
from ensemblekit.bench.run_suite import run_suite
from ensemblekit.bench.suite_status import entry_path
from ensemblekit.errors import UserError
from ensemblekit.runs.lock import run_lock
from tests.conftest import run_cli

TIMES = ("train_seconds", "time_x_single")  # wall times differ between executors; everything else must not
BASE = {
    "data": {"name": "synthetic", "train_size": 64, "test_size": 32, "batch_size": 32, "eval_batch_size": 32},
    "model": {"name": "resnet8", "width": 0.25},
    "train": {"lr": 0.05, "schedule": "cosine"},
    "runtime": {"accelerator": "cpu", "num_threads": 1},
}
RUNS = [
    {"name": "single", "method": {"name": "single"}},
    {"name": "de2", "method": {"name": "deep_ensemble", "members": 2}},
    {"name": "diverges", "method": {"name": "single"}, "set": {"train.max_loss": 1.0e-3}},
]


def _suite(tmp_path, runs=RUNS):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "base": BASE, "budget": 1, "runs": runs}))
    return path


def _results(out):
    with (out / "results.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in TIMES} for row in csv.DictReader(f)]


def _states(status):
    return {k: e["state"] for k, e in status["runs"].items()}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The reference: the tiny suite run one task after another in this process."""
    tmp = tmp_path_factory.mktemp("sequential")
    out = tmp / "out"
    status = run_suite(_suite(tmp), out, quiet=True, say=lambda _: None)
    return out, status


def test_local_jobs_2_gives_the_sequential_results_and_records_each_run(tmp_path, sequential):
    seq_out, seq_status = sequential
    out = tmp_path / "out"
    lines = []
    status = run_suite(_suite(tmp_path), out, executor="local", jobs=2, say=lines.append)
    assert (
        _states(status)
        == _states(seq_status)
        == {
            "single/seed0": "done",
            "de2/seed0": "done",
            "diverges/seed0": "failed",
        }
    )
    assert list(status["runs"]) == ["single/seed0", "de2/seed0", "diverges/seed0"]  # the suite's order
    rows = _results(out)
    assert [r["run"] for r in rows] == ["single", "de2"] and float(rows[0]["accuracy"]) >= 0
    assert rows == _results(seq_out)  # same seeds, one thread per task: bitwise the same runs
    assert sum("FAILED: training diverged" in line for line in lines) == 1 and len(lines) == 3
    # the state lives with each run; suite.json is assembled from the entries
    entry = json.loads(entry_path(out, "de2", 0).read_text())
    assert entry == status["runs"]["de2/seed0"] and entry["epochs"] == 1
    assert json.loads((out / "suite.json").read_text()) == status


def test_ray_on_two_cpus_gives_the_sequential_results(tmp_path, sequential):
    ray = pytest.importorskip("ray")
    seq_out, seq_status = sequential
    out = tmp_path / "out"
    lines = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        status = run_suite(_suite(tmp_path), out, executor="ray", say=lambda _: None)
        assert _states(status) == _states(seq_status)
        assert _results(out) == _results(seq_out)
        assert "training diverged" in status["runs"]["diverges/seed0"]["error"]

        # --resume with a parallel executor: finished runs are skipped (untouched), the failed one is retried
        mtime = (out / "runs/single/seed0/metrics.json").stat().st_mtime_ns
        (out / "suite.json").unlink()  # a lost summary is rebuilt from the runs' entries
        status = run_suite(_suite(tmp_path), out, resume=True, executor="ray", say=lines.append)
    finally:
        ray.shutdown()
    assert _states(status) == _states(seq_status)
    assert (out / "runs/single/seed0/metrics.json").stat().st_mtime_ns == mtime
    assert sum("finished earlier: skipped" in line for line in lines) == 2
    assert json.loads((out / "suite.json").read_text()) == status


def test_a_second_bench_on_the_same_folder_is_refused_in_one_line(tmp_path):
    path, out = _suite(tmp_path), tmp_path / "out"
    with run_lock(out, "bench", create=True):  # this process is the first bench
        second = run_cli("bench", str(path), "--out", str(out), "--executor", "local", "--jobs", "2")
    assert second.returncode == 2
    assert len(second.stderr.strip().splitlines()) == 1 and "is in use" in second.stderr
    assert not (out / "suite.json").exists() and not (out / "runs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jobs", "2"], "--jobs is for --executor local"),
        (["--executor", "local", "--address", "auto"], "--address is for --executor ray"),
        (["--executor", "local", "--jobs", "0"], "--jobs"),
        (["--executor", "threads"], "invalid choice"),
    ],
)
def test_executor_options_that_do_not_fit_are_one_line_errors(tmp_path, args, message):
    result = run_cli("bench", str(_suite(tmp_path)), "--out", str(tmp_path / "out"), *args)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_ray_executor_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # import ray fails
    with pytest.raises(UserError, match=r"pip install 'ensemblekit\[ray\]'"):
        run_suite(_suite(tmp_path, RUNS[:1]), tmp_path / "out", executor="ray", say=lambda _: None)
    assert not (tmp_path / "out" / "suite.json").exists()  # refused before anything is written


def test_an_unreachable_ray_cluster_is_a_one_line_error_before_anything_is_written(tmp_path):
    pytest.importorskip("ray")
    result = run_cli("bench", str(_suite(tmp_path)), "--out", str(tmp_path / "out"), "--executor", "ray",
                     "--address", "127.0.0.1:1", timeout=60)  # fmt: skip
    assert result.returncode == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "suite.json").exists()


@pytest.mark.parametrize(
    ("runtime", "cluster_gpus", "resources"),
    [
        ({"accelerator": "cpu", "num_threads": 3}, 8, (3.0, 0.0)),
        ({"accelerator": "cpu", "devices": 2, "strategy": "ddp", "num_threads": 2}, 0, (4.0, 0.0)),
        ({"accelerator": "gpu", "devices": 2, "strategy": "ddp"}, 0, (1.0, 2.0)),
        ({"accelerator": "cuda", "devices": "0,1,2"}, 4, (1.0, 3.0)),
        ({"accelerator": "auto", "devices": 1}, 4, (1.0, 1.0)),
        ({"accelerator": "auto", "devices": 1}, 0, (1.0, 0.0)),
    ],
)
def test_a_ray_task_asks_for_the_runs_devices(runtime, cluster_gpus, resources):
    assert task_resources({"runtime": runtime}, cluster_gpus) == resources


def test_a_ray_task_needs_a_device_count():
    with pytest.raises(UserError, match="number of devices per run"):
        task_resources({"runtime": {"accelerator": "gpu", "devices": "auto"}}, 2)


def _tasks(tmp_path, runtime):
    from ensemblekit.bench.executors import SuiteTask
    from ensemblekit.bench.suite import load_suite

    path = tmp_path / "gpu.yaml"
    base = {**BASE, "runtime": runtime}
    path.write_text(yaml.safe_dump({"name": "g", "base": base, "runs": RUNS[:2]}))
    suite = load_suite(path)
    return [SuiteTask(suite, run, 0, tmp_path) for run in suite.runs]


def test_local_workers_get_gpus_of_their_own(tmp_path):
    from ensemblekit.bench.executors import gpu_slices

    two_gpus = _tasks(tmp_path, {"accelerator": "gpu", "devices": 2})
    assert gpu_slices(two_gpus, 2, ["0", "1", "2", "3"]) == ["0,1", "2,3"]
    assert gpu_slices(two_gpus, 2, ["4", "5", "6", "7"]) == ["4,5", "6,7"]  # a Slurm allocation's GPUs
    with pytest.raises(UserError, match="--jobs 3 runs of 2 GPU\\(s\\) each need 6 GPUs; this machine has 4"):
        gpu_slices(two_gpus, 3, ["0", "1", "2", "3"])
    assert gpu_slices(_tasks(tmp_path, {"accelerator": "auto"}), 2, ["0", "1"]) == ["0", "1"]
    assert gpu_slices(_tasks(tmp_path, {"accelerator": "auto"}), 4, []) is None  # no GPU: CPU runs
    assert gpu_slices(_tasks(tmp_path, {"accelerator": "cpu"}), 4, ["0"]) is None


def test_a_local_worker_that_dies_is_a_failed_run_and_the_suite_goes_on(tmp_path, monkeypatch):
    (tmp_path / "dying_net.py").write_text("import os\n\n\ndef make(num_classes=10):\n    os._exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers get this sys.path
    runs = [RUNS[0], {"name": "dies", "method": {"name": "single"}, "set": {"model": {"factory": "dying_net:make"}}}]
    out = tmp_path / "out"
    status = run_suite(_suite(tmp_path, runs), out, executor="local", jobs=1, say=lambda _: None)
    assert _states(status) == {"single/seed0": "done", "dies/seed0": "failed"}
    assert "local worker died" in status["runs"]["dies/seed0"]["error"]
    assert json.loads(entry_path(out, "dies", 0).read_text())["state"] == "failed"
    assert [r["run"] for r in _results(out)] == ["single"]
