"""What users see of a suite: the cost columns of results.md/.csv, the plots' content and report.html.

Built from synthetic suite output directories (suite.json + metrics.json files), so nothing trains.
"""

from __future__ import annotations

import csv
import json
import re

import pytest
import yaml

from ensemblekit.bench import plots
from ensemblekit.bench.report import write_all
from ensemblekit.bench.results import (
    aggregate,
    collect_rows,
    cost_axes,
    frontiers,
    pareto_front,
    results_markdown,
    results_table,
    write_csv,
)

SUITE = {
    "name": "ux",
    "description": "a synthetic suite for the report test",
    "base": {"data": {"name": "synthetic", "train_size": 192}, "model": {"name": "resnet8", "width": 0.5}},
    "budget": 2,
    "corruptions": {"names": ["contrast"], "severities": [3], "max_images": 32},
    "runs": [],
}


def _metrics(method, members, acc, member_acc, ee, seconds, nll=1.0, **costs):
    edges = [i / 5 for i in range(6)]
    return {
        "method": method,
        "num_members": members,
        "dataset": "synthetic",
        "backbone": "resnet8",
        "metrics": {
            "accuracy": acc,
            "nll": nll,
            "ece": 0.05,
            "brier": 0.5,
            "member_accuracy_mean": member_acc,
            "disagreement": 0.2 if members > 1 else None,
        },
        "reliability": {
            "edges": edges,
            "count": [0, 3, 40, 50, 7],
            "confidence": [None, 0.3, 0.5, 0.7, 0.9],
            "accuracy": [None, 1.0, 0.4, 0.7, 0.85],
        },
        "costs": {
            "params": 1000 * members,
            "unique_params": 1000 * members,
            "inference_flops_vs_single": members,
            "single_inference_flops": 100,
            "train_epoch_equivalents": ee,
            "train_seconds": seconds,
            **costs,
        },
        "data": {"train_size": 192, "val_size": 0, "test_size": 64},
    }


def _suite_out(tmp_path, runs, suite=None):
    """A suite output directory: ``runs`` = [(name, metrics, entry extras)]."""
    out = tmp_path / "out"
    status = {"suite": "ux", "order": [r[0] for r in runs], "runs": {}}
    for name, record, extra in runs:
        d = out / "runs" / name / "seed0"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(record))
        entry = {"run": name, "seed": 0, "dir": f"runs/{name}/seed0", "state": "done", "budget": 2.0}
        status["runs"][f"{name}/seed0"] = {**entry, "budget_unit": "epoch_equivalents", **extra}
    (out / "suite.json").write_text(json.dumps(status))
    (out / "suite.yaml").write_text(yaml.safe_dump(suite or SUITE))
    return out, status


def _runs():
    sub_costs = {
        "unique_params": 3000,  # the parent is stored, not used at inference
        "inference_params": 2000,
        "params_nonzero": 1100,
        "inference_flops_sparse_vs_single": 1.1,
        "train_epoch_equivalents_sparse": 1.9,
    }
    return [
        ("single", _metrics("single", 1, 0.70, 0.70, 2.0, 10.0, inference_params=1000), {}),
        ("subnet", _metrics("subnetwork", 2, 0.76, 0.71, 3.0, 30.0, nll=0.9, **sub_costs), {}),
        ("nfe_old", _metrics("fission", 3, 0.74, 0.73, 2.04, 20.0, sparse_inference_flops_vs_single=0.68), {}),
        (  # an equal-FLOPs control: a single net at half the base FLOPs; its units are its own backbone's
            "nfe_old.control",
            _metrics("single", 1, 0.72, 0.72, 4.0, 12.0, inference_flops_vs_single=1.0),
            {"control_of": "nfe_old", "width": 0.35, "flops_vs_base": 0.5},
        ),
    ]


def _cells(md: str) -> dict[str, dict[str, str]]:
    lines = [line for line in md.splitlines() if line.startswith("|")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = [[c.strip().strip("*") for c in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_rows_show_sparse_costs_params_used_budget_overrun_gain_and_time_vs_single(tmp_path):
    out, status = _suite_out(tmp_path, _runs())
    rows = {r["run"]: r for r in collect_rows(out, status)}
    sub = rows["subnet"]
    assert sub["inference_params"] == 2000 and sub["unique_params"] == 3000 and sub["params_nonzero"] == 1100
    assert sub["overrun"] == pytest.approx(0.5) and sub["ensemble_gain"] == pytest.approx(0.05)
    assert sub["time_x_single"] == pytest.approx(3.0) and rows["single"]["time_x_single"] == 1.0
    assert rows["nfe_old"]["inference_flops_sparse_x_single"] == 0.68  # the key older fission runs wrote
    control = rows["nfe_old.control"]  # rescaled to the suite's backbone: 4 own epochs of a half-FLOPs net = 2 EE
    assert control["train_epoch_equivalents"] == pytest.approx(2.0) and control["inference_flops_x_single"] == 0.5
    assert control["overrun"] == pytest.approx(0.0) and control["control_of"] == "nfe_old"

    md = results_markdown(aggregate(list(rows.values())), "ux", tolerance=0.1)
    cells = _cells(md)
    assert "Budget: 2 single-model epoch-equivalents per run (fitting tolerance 10%)" in md
    assert cells["subnet (subnetwork)"]["overrun"] == "+50% !" and cells["nfe_old (fission)"]["overrun"] == "+2%"
    assert "Off budget by more than 10%: subnet (+50%)." in md
    assert cells["subnet (subnetwork)"]["params used"] == "2,000" and cells["subnet (subnetwork)"]["gain pt"] == "+5.00"
    assert cells["subnet (subnetwork)"]["sparse FLOPs x single"] == "1.10"
    assert cells["subnet (subnetwork)"]["nonzero params"] == "1,100" and cells["single"]["nonzero params"] == "-"
    assert cells["subnet (subnetwork)"]["time x single"] == "3.00"
    assert "budget" not in cells["single"]  # equal budgets: said once above the table
    assert "Equal-FLOPs controls: nfe_old.control" in md

    write_csv(list(rows.values()), out / "results.csv")
    with (out / "results.csv").open() as f:
        csv_rows = {r["run"]: r for r in csv.DictReader(f)}
    assert float(csv_rows["subnet"]["overrun"]) == pytest.approx(0.5)
    assert csv_rows["nfe_old.control"]["control_of"] == "nfe_old" and csv_rows["subnet"]["inference_params"] == "2000"


def test_a_frontier_ignores_cost_differences_within_the_fitting_tolerance():
    # issue 18: at a budget of 15, MIMO (38 %) came out at 14.3 epoch-equivalents and was "on the frontier"
    costs, accs = [15.0, 15.2, 14.3], [0.55, 0.50, 0.38]
    assert pareto_front(costs, accs, tolerance=0.0) == [2, 0]
    assert pareto_front(costs, accs, tolerance=0.1) == [0]
    assert pareto_front([1.0, 2.0], [0.5, 0.6], tolerance=0.1) == [0, 1]  # a real cost difference still counts


def test_an_equal_budget_suite_ranks_against_inference_flops_and_wall_time(tmp_path):
    out, status = _suite_out(tmp_path, _runs())
    agg = aggregate(collect_rows(out, status))
    assert [c for c, _ in cost_axes(agg)] == ["inference_flops_x_single", "time_x_single"]
    front = frontiers(agg, 0.1)
    # single (1.0x, 70 %) is dominated by the control (0.5x, 72 %); nfe_old (3x, 74 %) by subnet (2x, 76 %)
    assert front["accuracy vs inference_flops_x_single"] == ["nfe_old.control", "subnet"]
    agg[0]["budget"] = (4.0, 0.0)  # a cost curve: budgets differ
    assert [c for c, _ in cost_axes(agg)] == ["train_epoch_equivalents"]


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_pareto_plot_axes_legend_frontier_and_labels_that_do_not_overlap(tmp_path):
    out, status = _suite_out(tmp_path, _runs())
    agg = aggregate(collect_rows(out, status))
    agg.append({**agg[0], "run": "no_time", "time_x_single": None, "inference_flops_x_single": None})
    plot = plots.figure_pareto(agg, tolerance=0.1)
    fig = plot.figure
    acc_flops, acc_time = fig.axes[0], fig.axes[1]
    assert acc_flops.get_xlabel() == "inference FLOPs (x single)" and acc_time.get_xlabel().startswith("training wall")
    assert acc_flops.get_ylabel() == "accuracy (%)" and fig.axes[2].get_ylabel() == "NLL"
    legend = [t.get_text() for t in acc_flops.get_legend().get_texts()]
    assert legend == ["run", "Pareto frontier (2 of 4; costs within 10% equal)"]
    rings = acc_flops.collections[1].get_offsets()  # the frontier's rings, visible even for a single point
    assert sorted(map(tuple, rings.tolist())) == [(0.5, 72.0), (2.0, 76.0)]
    assert sorted(_texts(acc_flops)) == sorted(["single", "subnet", "nfe_old", "nfe_old.control"])
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in acc_flops.texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert plot.left_out == [
        "no_time: no inference_flops_x_single or accuracy",
        "no_time: no time_x_single or accuracy",
    ]
    assert any("not shown: no_time" in t.get_text() for t in fig.texts)
    one = plots.figure_pareto(agg[:1], tolerance=0.1).figure.axes[0]
    assert [t.get_text() for t in one.get_legend().get_texts()][1].startswith("Pareto frontier (1 of 1")
    assert len(one.collections[1].get_offsets()) == 1


def test_label_placement_separates_crowded_points():
    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(4, 3))
    pts = [(f"run_{i}", 1.0 + 0.001 * i, 50.0 + 0.01 * i) for i in range(4)] + [("far", 2.0, 60.0)]
    ax.scatter([p[1] for p in pts], [p[2] for p in pts])
    ax.margins(0.3)
    texts = plots.place_labels(ax, pts)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    plt.close(fig)


def test_params_plot_has_readable_ticks_and_uses_params_at_inference(tmp_path):
    out, status = _suite_out(tmp_path, _runs())
    agg = aggregate(collect_rows(out, status))
    ax = plots.figure_params(agg).figure.axes[0]
    assert ax.get_xscale() == "linear"  # 1,000 to 3,000: no log axis with two ticks
    assert ax.get_xlabel() == "parameters used at inference"
    xs = [float(x) for x in ax.collections[0].get_offsets()[:, 0]]  # single, subnet, nfe_old, control
    assert xs[1] == 2000.0  # subnet: the parameters it uses, not its stored parent (3,000)
    fig = ax.figure
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert len(labels) >= 3 and all(re.fullmatch(r"[\d.]+k?", x) for x in labels)
    agg[1]["inference_params"] = (2.0e6, 0.0)
    ax = plots.figure_params(agg).figure.axes[0]
    ax.figure.canvas.draw()
    visible = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    lo, hi = ax.get_xlim()
    assert ax.get_xscale() == "log" and len([t for t in ax.get_xticks() if lo <= t <= hi]) >= 3 and "1M" in visible


def test_members_plot_starts_at_zero_and_writes_the_gain(tmp_path):
    out, status = _suite_out(tmp_path, _runs())
    ax = plots.figure_members(aggregate(collect_rows(out, status))).figure.axes[0]
    assert ax.get_ylim()[0] == 0
    assert _texts(ax) == ["+0.0", "+5.0", "+1.0", "+0.0"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mean member", "ensemble"]


def test_reliability_plot_shows_bin_counts_ece_and_pales_small_bins(tmp_path):
    out, _ = _suite_out(tmp_path, _runs()[:1])
    (out / "runs/broken/seed0").mkdir(parents=True)
    plot = plots.figure_reliability([("single", out / "runs/single/seed0"), ("broken", out / "runs/broken/seed0")])
    ax = plot.figure.axes[0]
    assert ax.get_title() == "single\nECE 0.050, 100 images"
    assert _texts(ax) == ["3", "40", "50", "7"]
    alphas = [p.get_alpha() for p in ax.patches]
    assert alphas == [0.3, 0.85, 0.85, 0.3]  # 3 and 7 images: fewer than 10
    assert plot.left_out == ["broken: no reliability data in metrics.json"]


def test_interpolation_plot_names_the_members_and_why_runs_are_missing(tmp_path):
    out, _ = _suite_out(tmp_path, _runs()[:2])
    curve = [{"lambda": x / 2, "accuracy": 0.5} for x in range(3)]
    (out / "runs/subnet/seed0/interpolation.json").write_text(json.dumps({"members": [1, 2], "curve": curve}))
    runs = [("single", out / "runs/single/seed0"), ("subnet", out / "runs/subnet/seed0")]
    plot = plots.figure_interpolation(runs, {"single": "not available: one member"})
    ax = plot.figure.axes[0]
    assert ax.get_title() == "Interpolation between member 1 (λ=0) and member 2 (λ=1)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["subnet (member 1 → 2)"]
    assert plot.left_out == ["single: not available: one member"]


def test_report_html_says_what_the_suite_is_links_runs_and_highlights_the_best(tmp_path):
    out, _ = _suite_out(tmp_path, _runs())
    write_all(out)
    page = (out / "report.html").read_text()
    for fact in (
        "a synthetic suite for the report test",
        "synthetic: 192 training, 64 test images",
        "resnet8, width 0.5",
        "2 single-model epoch-equivalents per run; fitting tolerance 10%",
        "1 (train.seed 0)",
        "contrast; severities 3; 32 test images",
        "UTC",
    ):
        assert fact in page, fact
    import ensemblekit

    assert f"<dt>ensemblekit</dt><dd>{ensemblekit.__version__}</dd>" in page
    assert "<a href='runs/subnet/seed0/'>subnet (subnetwork)</a>" in page
    header = re.search(r"<tr>(<th>.*?)</tr>", page).group(1)
    assert header.count("<th>run</th>") == 1 and "<th>method</th>" not in header
    assert "<td class='best'>76.00</td>" in page  # the best accuracy
    assert "<td class='best'>0.900</td>" in page  # the best NLL
    assert "<td class='over'>+50% !</td>" in page and page.count("class='over'") == 1  # subnet's overrun
    assert page.count("class='best'") == 3  # accuracy, NLL, gain (ECE and Brier tie everywhere: nothing to show)
    assert page.rstrip().endswith("</figure>\n</body></html>") or page.rstrip().endswith("</figure></body></html>")
    table = results_table(aggregate(collect_rows(out, json.loads((out / "suite.json").read_text()))))
    assert table.headers[0] == "run" and "method" not in table.headers
