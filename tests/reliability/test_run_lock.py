"""One writer per run folder: a second writer is refused in one line naming the holder's pid."""

import os
import subprocess
import sys
import time

import pytest
import yaml

from ensemblekit.errors import UserError
from ensemblekit.runs.lock import LOCK_NAME, lock_holder, run_lock
from tests.conftest import REPO, tiny_config

HOLD = """
import sys, time
from ensemblekit.runs.lock import run_lock
with run_lock(sys.argv[1], "test", create=True):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def other_process_holds(tmp_path):
    """Start a process that holds the lock of ``tmp_path / 'run'``; yield (run dir, pid)."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, cwd=REPO, env=dict(os.environ)
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield run, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_second_writer_is_refused_naming_the_holder(other_process_holds):
    run, pid = other_process_holds
    assert lock_holder(run) == str(pid)
    with pytest.raises(UserError, match=rf"in use: another ensemblekit process \(pid {pid}\)"):
        with run_lock(run, "train", create=True):
            pass


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    proc.kill()  # SIGKILL: no clean-up runs, the kernel drops the flock
    proc.wait()
    assert (run / LOCK_NAME).exists()
    with run_lock(run, "train", create=True):
        assert lock_holder(run) == str(os.getpid())
    assert lock_holder(run) == "unknown"  # emptied on release


def test_lock_is_reentrant_in_one_process(tmp_path):
    with run_lock(tmp_path, "bench", create=True), run_lock(tmp_path, "train", create=True):
        assert lock_holder(tmp_path) == str(os.getpid())
    with run_lock(tmp_path, "again", create=True):  # released after the outer block
        pass


def test_missing_or_non_run_directory_is_refused_without_litter(tmp_path):
    with pytest.raises(UserError, match="not found"):
        with run_lock(tmp_path / "nope", "evaluate"):
            pass
    assert not (tmp_path / "nope").exists()
    with pytest.raises(UserError, match="not a run directory"):
        with run_lock(tmp_path, "evaluate"):
            pass
    assert not (tmp_path / LOCK_NAME).exists()


def test_train_evaluate_and_bench_refuse_a_locked_folder(other_process_holds, write_config, tmp_path):
    """The CLI's writers all take the lock: train, train --resume, evaluate and bench (exit 2, one line)."""
    from ensemblekit.cli import main

    run, _ = other_process_holds
    cfg = write_config(tiny_config())
    (run / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    for argv in (
        ["train", str(cfg), "--out", str(run)],
        ["train", str(cfg), "--out", str(run), "--resume"],
        ["evaluate", str(run)],
        ["interpolate", str(run)],
    ):
        assert main(argv) == 2, argv
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "base": tiny_config(), "runs": [{"name": "a"}]}))
    assert main(["bench", str(suite), "--out", str(run)]) == 2


def test_a_second_train_or_resume_while_a_train_runs_is_refused(tmp_path, write_config, capsys):
    """Two real writers: ``ensemblekit train`` runs in a subprocess; a second train and a --resume on its folder
    are refused in one line naming its pid, and the running one is not disturbed."""
    from ensemblekit.cli import main

    cfg = write_config(tiny_config(train={"epochs": 200}, data={"train_size": 128, "test_size": 32}))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ensemblekit", "train", str(cfg), "--out", str(out), "--quiet"]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "last.pt").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert lock_holder(out) == str(first.pid)
        rows_before = (out / "log.csv").read_text().count("\n")
        for extra in ([], ["--resume"], ["--overwrite"]):
            capsys.readouterr()
            assert main(["train", str(cfg), "--out", str(out), "--quiet", *extra]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"pid {first.pid}" in err[0], err
        assert first.poll() is None  # still training
        assert (out / "config.yaml").is_file() and (out / "log.csv").read_text().count("\n") >= rows_before
    finally:
        first.kill()
        first.wait()
    events = [yaml.safe_load(line)["event"] for line in (out / "events.jsonl").read_text().splitlines()]
    assert events.count("train_start") == 1
