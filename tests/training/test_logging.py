"""What a run tells its user: progress lines without a terminal, per-step scalars, TensorBoard, the summary."""

import csv
import io
import json

import pytest

from ensemblekit.errors import UserError
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import train
from ensemblekit.training.progress import Progress
from tests.conftest import tiny_config


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _stats():
    return {"loss": 1.0, "acc": 0.5, "lr": 0.1, "img_s": 100.0}


def test_plain_progress_prints_within_an_epoch_every_n_seconds_with_stage_and_run_eta():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("plain", out, every_seconds=30, clock=clock)
    progress.start_run([("parent", 1, 1000), ("child_0", 2, 1000), ("child_1", 2, 1000)])
    progress.start_stage("child_0", 2, 10, index=1, batch_size=100)
    for step in range(9):  # 10 s per step: a line every 30 s
        clock.now += 10
        progress.step(0, step, _stats)
    lines = out.getvalue().splitlines()
    assert [line.split()[6] for line in lines] == ["3/10", "6/10", "9/10"], lines
    assert lines[0].startswith("[stage 2/3 child_0] epoch 1/2 step 3/10 loss 1.0000")
    # 3 of 20 steps took 30 s: this stage has 17 steps (170 s) left, child_1 2 x 1000 images = 20 steps (200 s)
    assert lines[0].endswith("eta 2:50 (run 6:10)"), lines[0]


def test_plain_progress_by_steps_and_quiet_mode():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("plain", out, every_seconds=1e6, every_steps=4, clock=clock)
    progress.start_run([("train", 1, 320)])
    progress.start_stage("train", 1, 10, index=0, batch_size=32)
    for step in range(10):
        progress.step(0, step, _stats)
    assert [line.split()[6] for line in out.getvalue().splitlines()] == ["4/10", "8/10"]
    quiet = io.StringIO()
    q = Progress("quiet", quiet)
    q.start_stage("train", 1, 10)
    q.step(0, 0, _stats)
    q.message("hello")
    assert quiet.getvalue() == ""


def test_steps_csv_has_per_step_loss_and_the_lr_each_step_used(tmp_path):
    cfg = tiny_config(
        method={"name": "snapshot", "members": 2},
        train={"epochs": 2, "lr": 0.1},
        runtime={"accelerator": "cpu", "num_threads": 1, "log_every_steps": 1},
    )
    train(config_from_dict(cfg), tmp_path / "run", quiet=True)
    steps = list(csv.DictReader((tmp_path / "run" / "steps.csv").open()))
    assert [int(r["global_step"]) for r in steps] == list(range(1, 13))  # 192 images / 32 = 6 steps x 2 epochs
    assert float(steps[0]["lr"]) == pytest.approx(0.1)  # a cycle's first step uses the full rate
    epochs = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    # each epoch ends a cycle: the last step's rate is near 0, not the restarted 0.1 of the next cycle
    assert [float(r["lr"]) for r in epochs] == [
        pytest.approx(float(steps[5]["lr"])),
        pytest.approx(float(steps[-1]["lr"])),
    ]
    assert all(float(r["lr"]) < 0.01 for r in epochs)


def test_tensorboard_logger_writes_per_step_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(runtime={"accelerator": "cpu", "num_threads": 1, "logger": "tensorboard", "log_every_steps": 2})
    train(config_from_dict(cfg), tmp_path / "run", quiet=True)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [2, 4, 6, 8, 10, 12]
    assert [e.step for e in acc.Scalars("train/epoch_acc")] == [6, 12]
    assert "train/lr" in acc.Tags()["scalars"]


def test_tensorboard_without_the_package_is_refused_naming_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    cfg = tiny_config(runtime={"accelerator": "cpu", "logger": "tensorboard"})
    with pytest.raises(UserError, match=r"pip install 'ensemblekit\[tensorboard\]'"):
        train(config_from_dict(cfg), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_train_summary_puts_members_beside_the_ensemble_and_names_metrics_json(tmp_path):
    from ensemblekit.cli import train_summary

    record = {
        "metrics": {
            "accuracy": 0.9,
            "nll": 0.3,
            "member_accuracy_mean": 0.85,
            "member_nll_mean": 0.4,
            "ece": 0.01,
            "disagreement": 0.1,
        },
        "members": [{"accuracy": 0.84, "nll": 0.41}, {"accuracy": 0.86, "nll": 0.39}],
        "costs": {"params": 10, "inference_flops_vs_single": 2.0, "train_epoch_equivalents": 4.0, "train_seconds": 1},
    }
    text = train_summary(record, tmp_path / "run")
    assert "ensemble        0.9000   0.3000" in text
    assert "member mean     0.8500   0.4000" in text and "member 1        0.8600   0.3900" in text
    assert "+5.00 points" in text
    assert f"metrics: {tmp_path / 'run' / 'metrics.json'}" in text
    json.dumps(record)


def test_resume_drops_the_steps_logged_after_the_checkpoint_and_a_torn_row(tmp_path):
    from ensemblekit.training.logs import RunLogger

    logger = RunLogger(tmp_path)
    for g in range(1, 9):
        logger.step(
            {"stage": "train", "epoch": 1 + (g > 4), "step": (g - 1) % 4 + 1, "global_step": g, "loss": 1.0, "lr": 0.1}
        )
    with (tmp_path / "steps.csv").open("a") as f:
        f.write("train,2,")  # a kill while appending
    assert logger.truncate_steps_after(4) == 5
    rows = list(csv.DictReader((tmp_path / "steps.csv").open()))
    assert [int(r["global_step"]) for r in rows] == [1, 2, 3, 4]
    assert (tmp_path / "steps.csv").read_text().endswith("\n")
