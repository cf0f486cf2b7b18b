"""The command line: commands work, and every bad input ends with one line and exit code 2."""

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, tiny_config


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    import yaml

    d = tmp_path_factory.mktemp("cli")
    cfg = d / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(method={"name": "deep_ensemble", "members": 2}, train={"epochs": 1})))
    out = d / "run"
    result = run_cli("train", str(cfg), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout
    return cfg, out


def test_evaluate_reproduces_the_training_metrics(finished_run):
    _, out = finished_run
    result = run_cli("evaluate", str(out))
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    evaluated = json.loads((out / "eval.json").read_text())["metrics"]
    assert evaluated["accuracy"] == metrics["accuracy"]
    assert evaluated["nll"] == pytest.approx(metrics["nll"], rel=1e-6)


def test_describe_prints_costs_as_json(write_config):
    cfg = write_config(tiny_config(method={"name": "deep_ensemble", "members": 3}))
    result = run_cli("describe", str(cfg), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    for key in ("params", "unique_params", "inference_flops", "inference_flops_vs_single"):
        assert key in info
    assert info["inference_flops_vs_single"] == pytest.approx(3.0)
    assert info["num_members"] == 3


def test_list_and_compare(finished_run):
    _, out = finished_run
    methods = run_cli("list", "methods")
    assert methods.returncode == 0 and "deep_ensemble" in methods.stdout and "mc_dropout" in methods.stdout
    models = run_cli("list", "models")
    assert "resnet20" in models.stdout and "wrn28_10" in models.stdout
    table = run_cli("compare", str(out))
    assert table.returncode == 0 and "| run |" in table.stdout and "deep_ensemble" in table.stdout


def test_existing_run_is_never_overwritten_without_a_flag(finished_run):
    cfg, out = finished_run
    before = _snapshot(out)
    result = run_cli("train", str(cfg), "--out", str(out))
    _assert_one_line_error(result, "already holds a run", "--resume", "--overwrite")
    assert _snapshot(out) == before


def test_corrupt_checkpoint_on_resume(finished_run, tmp_path):
    import shutil

    cfg, out = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    ck = copy / "checkpoints" / "last.pt"
    ck.write_bytes(ck.read_bytes()[:100])
    before = _snapshot(copy)
    result = run_cli("train", str(cfg), "--out", str(copy), "--resume")
    _assert_one_line_error(result, "corrupt or truncated")
    assert _snapshot(copy) == before


@pytest.mark.parametrize(
    ("content", "args", "fragments"),
    [
        (None, ["train", "missing.yaml"], ["config file not found"]),
        ("train: [1,", ["train", "{cfg}"], ["not valid YAML"]),
        ("train:\n  lr: fast\n", ["train", "{cfg}"], ["train.lr"]),
        ("train:\n  lrr: 0.1\n", ["train", "{cfg}"], ["train.lrr", "unknown key"]),
        ("model:\n  name: resnet9\n", ["train", "{cfg}"], ["model.name", "valid:", "resnet20"]),
        ("method:\n  name: deep_ensemble\n  foo: 1\n", ["describe", "{cfg}"], ["method.foo", "unknown option"]),
        ("data:\n  name: cifar10\n  root: {empty}\n", ["train", "{cfg}"], ["cifar10", "ENSEMBLEKIT_DATA"]),
        (None, ["evaluate", "{empty}"], ["config.yaml"]),
        (
            "data:\n  name: synthetic\nmodel:\n  name: resnet8\nmethod:\n  name: mixture\n  param_budget: 0.1\n",
            ["train", "{cfg}"],
            ["param_budget", "sharing: blob"],
        ),
        (None, ["train"], ["config"]),
        (None, ["frobnicate"], ["invalid choice"]),
        (None, ["train", "{cfg}", "--set", "nonsense"], ["key.sub=value"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, content, args, fragments):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text((content or "{}").replace("{empty}", str(empty)))
    before = _snapshot(tmp_path)
    argv = [a.replace("{cfg}", str(cfg)).replace("{empty}", str(empty)) for a in args]
    result = run_cli(*argv, "--out", str(tmp_path / "out")) if argv[0] == "train" and len(argv) > 1 else run_cli(*argv)
    _assert_one_line_error(result, *fragments)
    assert _snapshot(tmp_path) == before


def test_interpolate_writes_a_curve_whose_ends_are_the_members(finished_run):
    _, out = finished_run
    result = run_cli("interpolate", str(out), "--member", "0", "1", "--points", "3")
    assert result.returncode == 0, result.stderr
    curve = json.loads((out / "interpolation.json").read_text())["curve"]
    assert [p["lambda"] for p in curve] == [0.0, 0.5, 1.0]
    assert all(0.0 <= p["accuracy"] <= 1.0 and p["nll"] > 0 for p in curve)
    bad = run_cli("interpolate", str(out), "--members", "0", "0")  # the old spelling still parses
    _assert_one_line_error(bad, "two different members")
