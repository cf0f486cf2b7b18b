"""Regression tests for every crash the fuzzing of issue 13 found: each ends in one line and exit 2 (or works)."""

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ensemblekit.cli import main
from ensemblekit.errors import UserError
from tests.conftest import tiny_config


def _one_line_exit_2(capsys, argv, *fragments):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 500, err[:2000]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.seed=-1", "train.seed"),
        ("train.seed=18446744073709551616", "train.seed"),
        ("data.seed=-5", "data.seed"),
        ("model.width=.inf", "model.width: must be a finite number"),
        ("model.width=.nan", "model.width"),
        ("train.warmup_epochs=.inf", "train.warmup_epochs"),
        ("runtime.num_threads=1000000000000", "runtime.num_threads"),
        ("data.train_size=1000000000000", "data.train_size"),
        ("train.lr=1e12", "train.lr"),
        ("method.members=1000000000000", "method.members"),
        ("train.epochs=1000000000000", "train.epochs"),
        ("model.kwargs.layers=1", "has no option(s) layers"),
        ("model.kwargs.num_classes=3", "has no option(s) num_classes"),
        ("model.kwargs.shortcut=5", "shortcut"),
    ],
)
def test_config_values_that_crashed_later_are_refused_up_front(capsys, tmp_path, write_config, override, fragment):
    cfg = write_config(tiny_config(train={"epochs": 3}))
    out = tmp_path / "out"
    _one_line_exit_2(capsys, ["train", cfg, "--out", out, "--quiet", "--set", override], fragment)
    assert not out.exists() or not any(p.name != ".lock" for p in out.iterdir())


def test_method_options_are_bounded_and_finite():
    from ensemblekit.resolve import load_config

    for overrides, fragment in (
        (["method.name=fge", "method.cycle_epochs=10000000"], "method.cycle_epochs: must be at most 100,000"),
        (["method.name=mixture", "method.param_budget=.inf"], "method.param_budget: must be a finite number"),
        (["method.name=subnetwork", "method.candidates=100000000"], "method.candidates"),
    ):
        with pytest.raises(UserError, match=fragment):
            load_config(None, overrides)


def test_echoed_values_are_short(capsys, write_config, tmp_path):
    huge = "[" + ",".join(["1"] * 100_000) + "]"
    line = _one_line_exit_2(capsys, ["describe", write_config(tiny_config()), "--set", f"train.lr={huge}"], "train.lr")
    assert len(line) < 200


def test_exploding_loss_counts_as_divergence_and_names_no_missing_checkpoint(capsys, tmp_path, write_config):
    """A loss past train.max_loss stops the run like NaN; with no checkpoint yet the message says so."""
    cfg = write_config(tiny_config(train={"epochs": 2, "max_loss": 1.0e-3}))
    line = _one_line_exit_2(capsys, ["train", cfg, "--out", tmp_path / "run", "--quiet"], "training diverged")
    assert "exploding" in line and "no checkpoint was written yet" in line


def test_non_finite_weights_after_the_last_step_are_divergence(tmp_path, write_config, capsys):
    """lr so high that the last update leaves inf weights: refused at the epoch's end, never 'done'."""
    cfg = write_config(tiny_config(train={"epochs": 1, "lr": 100.0, "schedule": "constant", "momentum": 0.0}))
    code = main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet", "--set", "train.max_loss=1e30"])
    err = capsys.readouterr().err
    if code == 0:  # the weights stayed finite: then the metrics must be finite too
        record = json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert np.isfinite(record["metrics"]["nll"])
    else:
        assert code == 2 and "diverged" in err and len(err.strip().splitlines()) == 1


def test_engine_stops_on_non_finite_weights(tmp_path):
    """The end-of-epoch weight check, driven directly: a stage whose update writes inf into a weight."""
    from ensemblekit.training.engine import Engine
    from ensemblekit.training.steps import NonFiniteLossError

    class Poisoned(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

    engine = Engine.__new__(Engine)
    engine.checkpoint_path = tmp_path / "last.pt"

    class S:
        name = "s"
        module = Poisoned()

    S.module.w.data.fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match="non-finite weights after stage 's'"):
        engine._check_finite_weights(S, 0)
    S.module.w.data.fill_(1.0)
    engine._check_finite_weights(S, 0)  # finite: nothing raised


def test_disk_full_while_saving_a_checkpoint_keeps_the_old_one(tmp_path):
    """A full disk (here: the file-size limit) while saving becomes one UserError; the previous checkpoint survives."""
    import resource
    import signal

    from ensemblekit.training.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.arange(4.0)})
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # writes past 64 kB fail like a full disk
    try:
        with pytest.raises(UserError, match=r"cannot write .*the previous file is kept") as err:
            save_checkpoint(path, {"w": torch.zeros(1_000_000)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert "\n" not in str(err.value)
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_atomic_writes_honour_the_umask(tmp_path):
    from ensemblekit.atomic import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _png(width: int, height: int, extra: bytes = b"") -> bytes:
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    raw = zlib.compress(b"".join(b"\x00" + b"\x00" * (3 * min(width, 4)) for _ in range(min(height, 4))))
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + extra + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b"")
    )


def _image_folder(root: Path, bad_name: bytes | None = None, bad_bytes: bytes | None = None) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    if bad_bytes is not None:
        (root / "train" / "a" / "zz.png").write_bytes(bad_bytes)
    if bad_name is not None:
        for split in ("train", "test"):
            d = os.path.join(bytes(root / split), bad_name)
            os.makedirs(d, exist_ok=True)
            shutil.copy(root / split / "a" / "0.png", os.path.join(d, b"im\xfe.png"))
    return root


def _folder_config(write_config, root: Path) -> Path:
    cfg = tiny_config(data={"name": "image_folder", "root": str(root), "train_size": None, "test_size": None})
    cfg["data"] = {k: v for k, v in cfg["data"].items() if v is not None}
    cfg["train"]["epochs"] = 1
    return write_config(cfg)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (_png(20000, 20000), "cannot decode image"),  # header claims 400M pixels: a decompression bomb
        (_png(8, 8, _png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"x" * (70 * 1024 * 1024)))), "cannot decode"),
        (b"\x89PNG\r\n\x1a\nthis is not a png", "cannot decode image"),
    ],
    ids=["decompression-bomb", "huge-ztxt", "truncated"],
)
def test_hostile_images_in_an_image_folder(capsys, tmp_path, write_config, bad, fragment):
    root = _image_folder(tmp_path / "data", bad_bytes=bad)
    cfg = _folder_config(write_config, root)
    _one_line_exit_2(
        capsys,
        ["train", cfg, "--out", tmp_path / "run", "--quiet", "--set", "data.cache_dir=null"]
        if False
        else ["train", cfg, "--out", tmp_path / "run", "--quiet"],
        fragment,
    )


def test_non_utf8_file_and_class_names_train(capsys, tmp_path, write_config):
    root = _image_folder(tmp_path / "data", bad_name=b"c\xff")
    cfg = _folder_config(write_config, root)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0, capsys.readouterr().err
    assert (
        json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]["test_size"] == 7
    )  # 3 + 3 + the one in the undecodable class


@pytest.mark.parametrize(
    "tail",
    [b"train,2,0.5", b"train,2,\xff\xfe\xff,0.1", b"tr"],
    ids=["partial-row", "non-utf8-row", "two-bytes"],
)
def test_resume_tolerates_a_damaged_last_log_row(capsys, tmp_path, write_config, tail):
    cfg = write_config(tiny_config(train={"epochs": 2}))
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    log = out / "log.csv"
    log.write_bytes(log.read_bytes() + tail)  # a kill while appending the next row
    assert main(["train", str(cfg), "--out", str(out), "--quiet", "--resume"]) == 0, capsys.readouterr().err
    rows = log.read_text(encoding="utf-8").splitlines()
    assert len(rows) == 3 and rows[0].startswith("stage,epoch")  # header + the two whole epochs
    assert json.loads((out / "metrics.json").read_text())["metrics"]["accuracy"] == metrics["accuracy"]


def test_compare_with_wrong_types_in_metrics_json(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(
        json.dumps(
            {"method": 7, "metrics": {"accuracy": "high", "nll": [1]}, "costs": {"params": 1.5}, "num_members": "four"}
        )
    )
    assert main(["compare", str(run)]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert "?" in row and "high" not in row
    (run / "metrics.json").write_bytes(b"\xff\xfe")
    _one_line_exit_2(capsys, ["compare", run], "cannot read")
    (run / "metrics.json").write_text("[1, 2]")
    _one_line_exit_2(capsys, ["compare", run], "JSON object")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (
            ["evaluate", "{run}", "--corruptions", "gaussian_noise", "--severities", "0-99999999999999999999"],
            "severities are 1 to 5",
        ),
        (["evaluate", "{run}", "--corruptions", "--severities", "9" * 5000], "severities"),
        (["evaluate", "{run}", "--corruptions", "--corruption-seed", "-1"], "--corruption-seed"),
        (["interpolate", "{run}", "--points", "99999999999999999999"], "--points must be between 2 and 1,001"),
        (["interpolate", "{run}", "--points", "1"], "--points"),
        (["grow", "{run}", "--children", "10000000000"], "--children"),
        (["bench", "{run}/x.yaml", "--out", "{run}/s", "--seeds", "99999999999"], "--seeds"),
    ],
)
def test_cli_numbers_out_of_range(capsys, tmp_path, argv, fragment):
    run = tmp_path / "run"
    run.mkdir()
    _one_line_exit_2(capsys, [a.replace("{run}", str(run)) for a in argv], fragment)


def test_ctrl_c_while_torch_imports_is_one_line():
    """Importing the CLI must not import torch, so an interrupt during start-up lands in main's handler."""
    import subprocess
    import sys

    code = "import sys, ensemblekit.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
    from ensemblekit import cli

    def interrupted(_args):
        raise KeyboardInterrupt

    old = cli.COMMANDS["list"]
    cli.COMMANDS["list"] = interrupted
    try:
        assert main(["list", "models"]) == 130
    finally:
        cli.COMMANDS["list"] = old


def test_edited_config_yaml_is_refused_by_evaluate(capsys, tmp_path, write_config):
    """model.pt records what made it: an edited config.yaml (deep_ensemble -> bagging) is refused, naming the field."""
    cfg = write_config(tiny_config(method={"name": "deep_ensemble", "members": 2}, train={"epochs": 4}))
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    for method in ("bagging", "snapshot", "fge"):
        edited = {**saved, "method": {"name": method, "members": 2}}
        (out / "config.yaml").write_text(yaml.safe_dump(edited))
        line = _one_line_exit_2(capsys, ["evaluate", out], "was trained with another config", "method.name")
        assert "config.yaml edited" in line
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(["evaluate", str(out)]) == 0


def test_old_model_files_are_checked_on_method_and_backbone(tmp_path):
    from ensemblekit.resolve import load_config
    from ensemblekit.runs import check_model_identity

    cfg = load_config(None, ["method.name=deep_ensemble"])
    check_model_identity(tmp_path / "model.pt", {"method": "deep_ensemble", "backbone": "resnet20"}, cfg)
    with pytest.raises(UserError, match=r"method\.name"):
        check_model_identity(tmp_path / "model.pt", {"method": "bagging", "backbone": "resnet20"}, cfg)


def test_kill_during_the_first_config_write_leaves_a_startable_folder(capsys, tmp_path, write_config):
    """Only leftovers of an interrupted atomic write (and a lock file): plain train starts; orphans are removed."""
    cfg = write_config(tiny_config(train={"epochs": 1}))
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / ".config.yaml.abc123.tmp").write_text("meta: {")
    (out / "checkpoints" / ".last.pt.xyz.tmp").write_bytes(b"partial")
    (out / ".lock").write_text("")
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    assert not list(out.rglob("*.tmp"))


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it(capsys, tmp_path, write_config):
    cfg = write_config(tiny_config(train={"epochs": 1}))
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0
    done = json.loads((out / "metrics.json").read_text())["metrics"]
    shutil.rmtree(out / "checkpoints")
    for name in ("metrics.json", "model.pt", "log.csv"):
        (out / name).unlink()
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / ".last.pt.q.tmp").write_bytes(b"partial")  # killed while writing the first one
    assert main(["train", str(cfg), "--out", str(out), "--quiet", "--resume"]) == 0, capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["metrics"]["accuracy"] == done["accuracy"]
    assert not list(out.rglob("*.tmp"))
