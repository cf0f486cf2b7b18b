"""Benchmark suites: budget fitting, a whole suite end to end (with a failing run), resume and the report."""

import json

import pytest
import yaml

from ensemblekit.bench.budget import RecipeCost, fit_epochs
from ensemblekit.bench.results import aggregate, pareto_front, results_markdown
from ensemblekit.bench.run_suite import run_suite
from ensemblekit.bench.suite import load_suite
from ensemblekit.errors import UserError
from tests.conftest import TINY, run_cli, tiny_config

BASE = {k: v for k, v in TINY.items() if k != "method"}


def _suite(tmp_path, runs, budget=2.0, name="suite.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "tiny", "base": BASE, "budget": budget, "runs": runs}))
    return path


def test_pareto_front_by_hand():
    costs = [1.0, 2.0, 3.0, 4.0, 2.0]
    accs = [0.5, 0.7, 0.6, 0.8, 0.65]
    assert pareto_front(costs, accs, maximize=True) == [0, 1, 3]
    nll = [1.0, 0.8, 0.9, 0.7, 0.8]
    assert pareto_front(costs, nll, maximize=False) == [0, 1, 4, 3]  # 1 and 4 tie: neither dominates


@pytest.mark.parametrize(
    ("method", "budget", "epochs"),
    [({"name": "single"}, 4, 4), ({"name": "deep_ensemble", "members": 2}, 4, 2), ({"name": "mc_dropout"}, 3, 3)],
)
def test_budget_is_met_by_choosing_train_epochs(method, budget, epochs):
    raw = tiny_config(method=method)
    cost = RecipeCost(raw, num_classes=10, train_size=192)
    assert fit_epochs(cost, budget)[0] == epochs
    assert cost(epochs) == pytest.approx(budget, rel=0.02)


def test_batch_ensemble_budget_accounts_for_its_tiled_batch():
    raw = tiny_config(method={"name": "batch_ensemble", "members": 2})
    cost = RecipeCost(raw, num_classes=10, train_size=192)
    per_epoch = cost(1)
    assert 1.8 < per_epoch < 2.3  # two members in one pass: about twice a single model's FLOPs per image
    assert fit_epochs(cost, 8)[0] == round(8 / per_epoch)


def test_suite_file_errors_are_one_line(tmp_path):
    bad = _suite(tmp_path, [{"name": "a", "method": {"name": "single"}}, {"name": "a", "method": {"name": "single"}}])
    with pytest.raises(UserError, match="unique; repeated: a"):
        load_suite(bad)
    bad = _suite(tmp_path, [{"name": "x", "method": {"name": "deep_ensemble", "bogus": 1}}], name="b.yaml")
    with pytest.raises(UserError, match=r"run x: .*method\.bogus: unknown option"):
        load_suite(bad)
    bad = _suite(tmp_path, [{"name": "x", "method": {"name": "single"}, "colour": 1}], name="c.yaml")
    with pytest.raises(UserError, match=r"runs\.0\.colour: unknown key"):
        load_suite(bad)


def test_suite_end_to_end_with_a_failing_run_resume_and_report(tmp_path):
    runs = [
        {"name": "single", "method": {"name": "single"}},
        {"name": "de2", "method": {"name": "deep_ensemble", "members": 2}},
        {"name": "diverges", "method": {"name": "single"}, "set": {"train.max_loss": 1.0e-3}, "budget": 1},
    ]
    path = _suite(tmp_path, runs, budget=2.0)
    out = tmp_path / "out"
    lines = []
    status = run_suite(path, out, quiet=True, say=lines.append)
    states = {k: e["state"] for k, e in status["runs"].items()}
    assert states == {"single/seed0": "done", "de2/seed0": "done", "diverges/seed0": "failed"}
    assert "training diverged: exploding" in status["runs"]["diverges/seed0"]["error"]
    assert status["runs"]["single/seed0"]["epochs"] == 2 and status["runs"]["de2/seed0"]["epochs"] == 1
    single = json.loads((out / "runs/single/seed0/metrics.json").read_text())
    de = json.loads((out / "runs/de2/seed0/metrics.json").read_text())
    # the budget fit predicts the cost meter exactly (no hooks, full batches)
    assert single["costs"]["train_epoch_equivalents"] == pytest.approx(2.0, rel=1e-6)
    assert de["costs"]["train_epoch_equivalents"] == pytest.approx(2.0, rel=1e-6)
    csv_lines = (out / "results.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 3 and csv_lines[1].startswith("single,0,single,1,")
    md = (out / "results.md").read_text()
    assert "| single | 1 |" in md and "| de2 (deep_ensemble) | 2 |" in md and "Pareto frontier" in md
    for name in ("pareto", "params", "reliability", "members"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
        assert (out / "plots" / f"{name}.svg").is_file()
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 4 and "diverges" in report
    assert "![pareto](plots/pareto.png)" in (out / "report.md").read_text()

    mtime = (out / "runs/single/seed0/metrics.json").stat().st_mtime_ns
    lines.clear()
    status = run_suite(path, out, resume=True, only=["single"], quiet=True, say=lines.append)
    assert "finished earlier: skipped" in lines[1]
    assert (out / "runs/single/seed0/metrics.json").stat().st_mtime_ns == mtime

    again = run_cli("bench", str(path), "--out", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    report = run_cli("report", str(out))
    assert report.returncode == 0 and "| de2 (deep_ensemble) | 2 |" in report.stdout


def test_results_table_reports_mean_and_std_over_seeds():
    rows = [
        {"run": "a", "seed": s, "method": "single", "accuracy": acc, "nll": 1.0, "train_epoch_equivalents": 2.0}
        for s, acc in enumerate([0.5, 0.7])
    ]
    agg = aggregate(rows)
    assert agg[0]["accuracy"][0] == pytest.approx(0.6) and agg[0]["accuracy"][1] == pytest.approx(0.1414, abs=1e-3)
    md = results_markdown(agg)
    assert "60.00 ± 14.14" in md and "over 2 seeds" in md


def test_budget_fit_skips_epochs_the_method_refuses():
    raw = tiny_config(method={"name": "snapshot", "members": 4})  # train.epochs must be a multiple of 4
    cost = RecipeCost(raw, num_classes=10, train_size=192)
    assert fit_epochs(cost, 8) == (8, pytest.approx(8.0))
    assert fit_epochs(cost, 6)[0] == 4  # 4 and 8 are equally far: the lower one
    with pytest.raises(UserError):
        cost(6)


def test_suite_evaluates_corruptions_and_reports_them(tmp_path):
    path = tmp_path / "suite.yaml"
    suite = {
        "name": "c",
        "base": BASE,
        "budget": 1,
        "corruptions": {"names": ["contrast", "gaussian_noise"], "severities": [1, 5], "max_images": 32},
        "interpolation_points": 3,
        "runs": [{"name": "single", "method": {"name": "single"}}, {"name": "de", "method": {"name": "deep_ensemble"}}],
    }
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    status = run_suite(path, out, quiet=True, say=lambda line: None)
    assert "corruption_seconds" in status["runs"]["single/seed0"]
    assert "not available" in status["runs"]["single/seed0"]["interpolation"]  # one member: nothing to interpolate
    curve = json.loads((out / "runs/de/seed0/interpolation.json").read_text())["curve"]
    assert [p["lambda"] for p in curve] == [0.0, 0.5, 1.0]
    assert (out / "plots/interpolation.png").is_file()
    record = json.loads((out / "runs/single/seed0/corruptions.json").read_text())
    assert record["num_images"] == 32 and record["severities"] == [1, 5]
    row = (out / "results.csv").read_text().splitlines()[1].split(",")
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert float(row[header.index("corrupted_accuracy")]) == pytest.approx(record["mean"]["accuracy"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**suite, "corruptions": {"names": ["fogg"]}}))
    with pytest.raises(UserError, match=r"corruptions: .*fogg"):
        load_suite(bad)


def test_budget_estimate_counts_a_teachers_forward_like_the_cost_meter(tmp_path):
    """Distillation runs a teacher in prepare_batch: estimate == what the meter charges (3 x student + teacher)."""
    from ensemblekit.resolve import config_from_dict
    from ensemblekit.runs import train

    raw = tiny_config(
        method={"name": "distillation", "architectures": [{"name": "resnet8", "width": 0.5}], "teacher_epochs": 1}
    )
    cost = RecipeCost(raw, num_classes=10, train_size=192)
    record = train(config_from_dict(raw), tmp_path / "run", quiet=True)
    assert record["costs"]["train_epoch_equivalents"] == pytest.approx(cost(2), rel=1e-6)


def test_equal_flops_width_matches_the_inference_flops_of_a_run():
    from ensemblekit.bench.budget import equal_flops_width
    from ensemblekit.metrics import inference_flops
    from ensemblekit.models import create_model

    raw = tiny_config()  # resnet8, width 0.5
    base = inference_flops(create_model("resnet8", num_classes=10, width=0.5))
    for ratio in (0.5, 2.0):
        width, achieved = equal_flops_width(raw, 10, ratio)
        assert (width < 0.5) == (ratio < 1)
        assert inference_flops(create_model("resnet8", num_classes=10, width=width)) / base == pytest.approx(achieved)
        assert achieved == pytest.approx(ratio, rel=0.15)  # channel counts are whole numbers
    with pytest.raises(UserError, match="width"):
        equal_flops_width(raw, 10, 1.0e6)


def test_seconds_budget_fits_epochs_from_timed_steps():
    single = RecipeCost(tiny_config(), num_classes=10, train_size=192, unit="seconds")
    assert single.x.shape[0] == TINY["data"]["batch_size"]  # timed on a training batch
    assert single(1) > 0 and single(3) == pytest.approx(3 * single(1))  # per-stage seconds, measured once
    epochs, seconds = fit_epochs(single, 3.5 * single(1))
    assert epochs == 3 and seconds == pytest.approx(3 * single(1))


def test_suite_with_an_equal_flops_control_and_its_validation(tmp_path):
    runs = [
        {"name": "single", "method": {"name": "single"}},
        {"name": "de2", "method": {"name": "deep_ensemble", "members": 2}},
    ]
    path = tmp_path / "suite.yaml"
    suite = {"name": "c", "base": BASE, "budget": 2, "equal_flops_control": ["de2"], "runs": runs}
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    lines = []
    status = run_suite(path, out, quiet=True, say=lines.append)
    assert status["order"] == ["single", "de2", "de2.control"] and lines[2] == "[3/3] de2.control seed 0"
    entry = status["runs"]["de2.control/seed0"]
    assert entry["state"] == "done" and entry["control_of"] == "de2" and entry["flops_target"] == pytest.approx(2.0)
    assert entry["width"] > 0.5 and entry["flops_vs_base"] == pytest.approx(2.0, rel=0.15)
    record = json.loads((out / "runs/de2.control/seed0/metrics.json").read_text())
    assert record["method"] == "single" and record["num_members"] == 1
    spent = record["costs"]["train_epoch_equivalents"] * entry["flops_vs_base"]  # in the base backbone's epochs
    assert spent == pytest.approx(2.0, rel=0.5)
    md = (out / "results.md").read_text()
    assert "| de2.control (single) |" in md and "Equal-FLOPs controls: de2.control" in md

    for bad, message in (
        ({**suite, "equal_flops_control": ["nope"]}, "equal_flops_control: no run named nope"),
        ({**suite, "runs": [*runs, {"name": "x.control", "method": {"name": "single"}}]}, "reserved"),
        ({**suite, "budget_unit": "hours"}, "budget_unit"),
    ):
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(UserError, match=message):
            load_suite(path)
