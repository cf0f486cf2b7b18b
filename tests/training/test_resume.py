"""Resume: a run killed with SIGKILL (or Ctrl-C) and resumed ends with bitwise-equal weights (CPU)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli, tiny_config


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _start(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ensemblekit", "train", str(config), "--out", str(out), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_rows(log: Path, rows: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        checkpoint = log.parent / "checkpoints" / "last.pt"
        if log.exists() and len(log.read_text().strip().splitlines()) >= rows + 1 and checkpoint.exists():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("timeout waiting for epochs")


# deep ensemble of 2 members x 3 epochs: kill inside member 0 (after epoch 1) and inside member 1.
MULTI = tiny_config(method={"name": "deep_ensemble", "members": 2}, train={"epochs": 3, "seed": 4})


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    import yaml

    d = tmp_path_factory.mktemp("ref")
    cfg = d / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(MULTI))
    out = d / "run"
    result = run_cli("train", str(cfg), "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    return cfg, out


@pytest.mark.parametrize("kill_after_rows", [1, 4])
def test_sigkill_then_resume_is_bitwise_equal(reference_run, tmp_path, kill_after_rows):
    cfg, ref = reference_run
    out = tmp_path / "run"
    proc = _start(cfg, out, "--quiet")
    _wait_for_rows(out / "log.csv", kill_after_rows, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.pt").exists()
    assert (out / "checkpoints" / "last.pt").exists()
    result = run_cli("train", str(cfg), "--out", str(out), "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    _assert_bitwise_equal(_weights(ref), _weights(out))
    events = (out / "events.jsonl").read_text()
    assert '"event": "resume"' in events
    # every (stage, epoch) is logged exactly once, as in the uninterrupted run
    rows = [tuple(line.split(",")[:2]) for line in (out / "log.csv").read_text().splitlines()[1:]]
    ref_rows = [tuple(line.split(",")[:2]) for line in (ref / "log.csv").read_text().splitlines()[1:]]
    assert rows == ref_rows
    # per-step scalars too: the steps past the checkpoint are dropped and logged again, not twice
    assert (out / "steps.csv").read_text() == (ref / "steps.csv").read_text()


def test_ctrl_c_saves_a_checkpoint_and_prints_how_to_resume(reference_run, tmp_path):
    cfg, ref = reference_run
    out = tmp_path / "run"
    proc = _start(cfg, out)
    _wait_for_rows(out / "log.csv", 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    result = run_cli("train", str(cfg), "--out", str(out), "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    _assert_bitwise_equal(_weights(ref), _weights(out))
