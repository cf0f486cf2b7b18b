"""Results of a suite, generated from its run directories (never typed by hand).

``results.csv`` has one row per run and seed; ``results.md`` is a table in the form of the papers' tables
(mean ± std over seeds) with the Pareto frontiers named. Besides each run's own ``metrics.json`` a row holds what
only the suite knows:

* ``budget`` (in ``budget_unit``) and ``overrun = spent / budget − 1``, spent being the measured training
  epoch-equivalents (or seconds); a run whose |overrun| exceeds the suite's ``budget_tolerance`` is flagged.
* ``ensemble_gain = accuracy − member_accuracy``: the ensemble's gain over its own mean member (separates what
  combining buys from what the budget buys).
* ``time_x_single = train_seconds / train_seconds(single)``: wall time relative to the suite's ``single`` run of
  the same seed (equal FLOPs are not equal time).
* ``inference_params``: parameters the prediction uses (``unique_params`` also counts stored networks inference
  never runs, e.g. a subnetwork ensemble's parent) and the sparse costs of masked ensembles
  (:mod:`ensemblekit.metrics.sparse_costs`).

An equal-FLOPs control (``<run>.control``) has a narrower or wider backbone than the suite's; its FLOPs ratios and
epoch-equivalents are rescaled to the suite's backbone (× its FLOPs relative to the base backbone) so every row is
in the same unit.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemblekit.metrics.sparse_costs import LEGACY_KEYS
from ensemblekit.runs.record import columns

CORRUPTION_COLUMNS: list[tuple[str, str, str, str]] = [
    # (column, path in corruptions.json, header, format): ``evaluate --corruptions``, not metrics.json
    ("corrupted_accuracy", "mean.accuracy", "c-acc %", "%"),
    ("corrupted_nll", "mean.nll", "c-NLL", ".3f"),
    ("corrupted_ece", "mean.ece", "c-ECE", ".3f"),
]
# (column, path in metrics.json or in corruptions.json as "corruptions:<path>"); the metrics.json columns come from
# the record schema (ensemblekit.runs.record.RunRecord, the fields whose tables include "results")
FIELDS: list[tuple[str, str]] = [
    *((c.name, c.path) for c in columns("results")),
    *((name, f"corruptions:{path}") for name, path, _, _ in CORRUPTION_COLUMNS),
]
# computed by the suite (see the module docstring)
DERIVED = ["budget", "overrun", "ensemble_gain", "time_x_single"]
TEXT = ["method", "budget_unit", "control_of"]
NUMERIC = [name for name, _ in FIELDS if name not in TEXT] + DERIVED
CSV_COLUMNS = ["run", "seed", *(name for name, _ in FIELDS), "budget_unit", "control_of", *DERIVED]
SCALED = tuple(c.name for c in columns("results") if c.scaled)
SPARSE = tuple(c.name for c in columns("results") if c.sparse)
DEFAULT_TOLERANCE = 0.1

SUITE_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    # the derived columns of the Markdown table, each list after the record column it follows
    "train_seconds": [
        ("time x single", "time_x_single", ".2f"),
        ("budget", "budget", "g"),
        ("overrun", "overrun", "+%"),
    ],
    "accuracy": [("gain pt", "ensemble_gain", "pt")],
}


def _report_columns() -> list[tuple[str, str, str]]:
    """The record schema's ``report`` columns, the suite's derived columns after them, the corruption columns last."""
    out = []
    for c in columns("report"):
        out += [(c.label, c.name, c.format), *SUITE_COLUMNS.get(c.name, [])]
    return out + [(header, name, spec) for name, _, header, spec in CORRUPTION_COLUMNS]


# The Markdown table: (header, column, format; "%" = percent with 2 decimals, "+%" = signed percent, "pt" = points)
TABLE: list[tuple[str, str, str]] = _report_columns()
BEST = {"accuracy": max, "nll": min, "ece": min, "brier": min, "corrupted_accuracy": max, "corrupted_nll": min,
        "corrupted_ece": min, "ensemble_gain": max}  # fmt: skip
"""Columns whose best value the report highlights, and whether best is the largest or the smallest."""


def get_path(record: dict[str, Any], path: str) -> Any:
    """``record["a"]["b"]`` for ``path = "a.b"``; ``None`` where a key is missing."""
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def get_cost(record: dict[str, Any], path: str) -> Any:
    """``get_path``; for a sparse-cost key, runs written before the shared schema are read too (``LEGACY_KEYS``)."""
    value = get_path(record, path)
    if value is None and path.startswith("costs."):
        legacy = LEGACY_KEYS.get(path.removeprefix("costs."))
        value = None if legacy is None else get_path(record, f"costs.{legacy}")
    return value


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def run_row(run_dir: Path, run: str, seed: int, entry: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """One results row from a finished run directory (``None`` when it has no metrics.json).

    ``entry`` is the run's ``suite.json`` entry (budget, unit, equal-FLOPs control); see the module docstring.
    """
    metrics = _read_json(run_dir / "metrics.json")
    if not metrics:
        return None
    entry = entry or {}
    sources = {"": metrics, "corruptions": _read_json(run_dir / "corruptions.json")}
    row: dict[str, Any] = {"run": run, "seed": seed}
    for name, path in FIELDS:
        source, _, key = path.rpartition(":")
        row[name] = get_cost(sources[source], key)
    scale = _number(entry.get("flops_vs_base")) if entry.get("control_of") else None
    if scale is not None:  # a control's units are its own backbone's: back to the suite's backbone
        for name in SCALED:
            if _number(row[name]) is not None:
                row[name] = row[name] * scale
    row["budget"] = entry.get("budget")
    row["budget_unit"] = entry.get("budget_unit", "epoch_equivalents")
    row["control_of"] = entry.get("control_of")
    spent_key = "train_seconds" if row["budget_unit"] == "seconds" else "train_epoch_equivalents"
    spent, budget = _number(row[spent_key]), _number(row["budget"])
    row["overrun"] = spent / budget - 1 if spent is not None and budget else None
    acc, member = _number(row["accuracy"]), _number(row["member_accuracy"])
    row["ensemble_gain"] = acc - member if acc is not None and member is not None else None
    row["time_x_single"] = None
    return row


def collect_rows(out: Path, status: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of every finished run and seed of a suite, in the suite's order (with ``time_x_single`` filled in)."""
    order = {name: i for i, name in enumerate(status.get("order", []))}
    entries = sorted(status.get("runs", {}).values(), key=lambda e: (order.get(e["run"], 1 << 30), e["seed"]))
    rows = []
    for e in entries:
        if e.get("state", "done") != "done":
            continue
        row = run_row(out / e.get("dir", f"runs/{e['run']}/seed{e['seed']}"), e["run"], e["seed"], e)
        if row is not None:
            rows.append(row)
    add_time_vs_single(rows)
    return rows


def reference_single(rows: list[dict[str, Any]]) -> str | None:
    """The run the wall times are relative to: the first ``single`` run that is not an equal-FLOPs control."""
    return next((r["run"] for r in rows if r.get("method") == "single" and not r.get("control_of")), None)


def add_time_vs_single(rows: list[dict[str, Any]]) -> None:
    """Set ``time_x_single`` = train_seconds / train_seconds of the reference single run (same seed, else mean)."""
    ref = reference_single(rows)
    if ref is None:
        return
    by_seed = {r["seed"]: _number(r["train_seconds"]) for r in rows if r["run"] == ref}
    known = [v for v in by_seed.values() if v]
    fallback = statistics.fmean(known) if known else None
    for row in rows:
        base = by_seed.get(row["seed"]) or fallback
        seconds = _number(row["train_seconds"])
        row["time_x_single"] = seconds / base if seconds is not None and base else None


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """``results.csv``: one row per run and seed, every field."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run name: ``method``, ``seeds``, the text fields and, for every numeric field, ``(mean, std)``.

    The std is the sample standard deviation (0 with one seed); a field missing in every seed is ``None``.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["run"], []).append(row)
    out = []
    for run, group in groups.items():
        agg: dict[str, Any] = {"run": run, "seeds": len(group)}
        agg.update({name: group[0].get(name) for name in TEXT})
        for name in NUMERIC:
            values = [v for v in (_number(r.get(name)) for r in group) if v is not None]
            if not values:
                agg[name] = None
            else:
                agg[name] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        out.append(agg)
    return out


def pareto_front(costs: list[float], values: list[float], maximize: bool = True, tolerance: float = 0.0) -> list[int]:
    """Indices of the points no other point dominates, sorted by cost.

    Point j dominates point i when its cost is at most (1 + tolerance)·cost_i and its value is at least as good,
    and it is strictly better in value or cheaper by more than the tolerance ((1 + tolerance)·cost_j < cost_i).
    With ``tolerance = 0`` this is the ordinary Pareto dominance; with the suite's budget-fitting tolerance, costs
    that differ by less than it count as equal (an equal-budget suite's 14.3 vs 15 epoch-equivalents is noise).
    """
    sign = 1.0 if maximize else -1.0
    t = 1.0 + tolerance
    pts = [(c, sign * v) for c, v in zip(costs, values, strict=True)]
    front = []
    for i, (c, v) in enumerate(pts):
        dominated = any(j != i and c2 <= c * t and v2 >= v and (v2 > v or c2 * t < c) for j, (c2, v2) in enumerate(pts))
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (costs[i], -sign * values[i]))


def equal_budget(agg: list[dict[str, Any]]) -> bool:
    """Whether every run has the same (non-null) budget: then training cost is not what tells runs apart."""
    budgets = {a["budget"][0] if a.get("budget") else None for a in agg}
    return len(budgets) == 1 and None not in budgets


def cost_axes(agg: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The cost axes the frontiers are drawn against: ``(column, label)``.

    An equal-budget suite: inference FLOPs and wall time relative to the single run (its training cost is the
    budget up to fitting noise). Otherwise: the training cost in epoch-equivalents.
    """
    if equal_budget(agg):
        time = ("time_x_single", "training wall time (x single)")
        if not any(a.get("time_x_single") for a in agg):
            time = ("train_seconds", "training wall time (s)")
        return [("inference_flops_x_single", "inference FLOPs (x single)"), time]
    return [("train_epoch_equivalents", "training cost (single-model epoch-equivalents)")]


def frontiers(agg: list[dict[str, Any]], tolerance: float = DEFAULT_TOLERANCE) -> dict[str, list[str]]:
    """Run names on the accuracy and NLL Pareto frontiers against each cost axis (:func:`cost_axes`).

    Keys ``"<accuracy|nll> vs <cost column>"``; costs within ``tolerance`` of each other count as equal.
    """
    out = {}
    for col, _ in cost_axes(agg):
        for metric, maximize in (("accuracy", True), ("nll", False)):
            usable = [a for a in agg if a.get(col) and a.get(metric)]
            front = pareto_front(
                [a[col][0] for a in usable], [a[metric][0] for a in usable], maximize=maximize, tolerance=tolerance
            )
            out[f"{metric} vs {col}"] = [usable[i]["run"] for i in front]
    return out


def _format(mean: float, std: float, spec: str, seeds: int) -> str:
    if spec == "+%":
        return f"{100 * mean:+.0f}%" + (f" ± {100 * std:.0f}" if seeds > 1 else "")
    if spec in ("%", "pt"):
        mean, std, spec = 100 * mean, 100 * std, "+.2f" if spec == "pt" else ".2f"
    if spec.endswith("d"):  # counts are means over seeds: no decimals
        spec = spec[:-1] + ".0f"
    text = format(mean, spec)
    return f"{text} ± {format(std, spec.lstrip('+'))}" if seeds > 1 else text


def run_label(a: dict[str, Any]) -> str:
    """The run's name, with its method in parentheses when the name does not already say it."""
    method = a.get("method") or ""
    return a["run"] if not method or method in a["run"] else f"{a['run']} ({method})"


@dataclass
class Table:
    """The results table: header, one row of cells per run, and which cells hold a column's best value."""

    headers: list[str]
    rows: list[list[str]]
    best: set[tuple[int, int]] = field(default_factory=set)
    flagged: list[str] = field(default_factory=list)
    """``"run (+30%)"`` for each run whose |overrun| exceeds the tolerance."""
    off_budget: set[tuple[int, int]] = field(default_factory=set)
    """The overrun cells of those runs."""


def results_table(agg: list[dict[str, Any]], tolerance: float = DEFAULT_TOLERANCE) -> Table:
    """The table of :func:`results_markdown` as cells (the report renders the same cells as HTML).

    Columns no run has (sparse costs of dense suites, corruptions not evaluated) are left out, and so are the budget
    column when every run has the same budget (the text above the table says it) and ``time x single`` when the
    suite has no single run. An overrun beyond ``tolerance`` is marked ``!``.
    """
    seeds = max((a["seeds"] for a in agg), default=1)
    cols = [c for c in TABLE if any(a.get(c[1]) is not None for a in agg)]
    if equal_budget(agg):
        cols = [c for c in cols if c[1] != "budget"]
    headers = ["run", *(h for h, _, _ in cols)]
    best_of = {}
    for j, (_, col, _) in enumerate(cols, 1):
        values = [a[col][0] for a in agg if a.get(col)]
        if col in BEST and len(set(values)) > 1:  # a tie everywhere has no best
            best_of[j] = BEST[col](values)
    table = Table(headers, [])
    for i, a in enumerate(agg):
        cells = [run_label(a)]
        for j, (_, col, spec) in enumerate(cols, 1):
            value = a.get(col)
            if value is None:
                cells.append("-")
                continue
            text = _format(value[0], value[1], spec, seeds if a["seeds"] > 1 else 1)
            if col == "overrun" and abs(value[0]) > tolerance:
                text += " !"
                table.flagged.append(f"{a['run']} ({100 * value[0]:+.0f}%)")
                table.off_budget.add((i, j))
            if j in best_of and value[0] == best_of[j]:
                table.best.add((i, j))
            cells.append(text)
        table.rows.append(cells)
    return table


def _budget_line(agg: list[dict[str, Any]], tolerance: float) -> str:
    units = {a.get("budget_unit") or "epoch_equivalents" for a in agg}
    unit = "seconds of training" if units == {"seconds"} else "single-model epoch-equivalents"
    if equal_budget(agg):
        return f"Budget: {agg[0]['budget'][0]:g} {unit} per run (fitting tolerance {100 * tolerance:.0f}%)."
    if any(a.get("budget") for a in agg):
        return f"Budget: per run, in {unit} (fitting tolerance {100 * tolerance:.0f}%)."
    return "Budget: none (every run as configured)."


def results_markdown(agg: list[dict[str, Any]], title: str = "Results", tolerance: float = DEFAULT_TOLERANCE) -> str:
    """The results table (mean ± std over seeds; the best value of a column in bold) and the Pareto frontiers."""
    seeds = max((a["seeds"] for a in agg), default=1)
    lines = [f"# {title}", "", _budget_line(agg, tolerance), ""]
    if seeds > 1:
        lines += [f"Mean ± standard deviation over {seeds} seeds.", ""]
    table = results_table(agg, tolerance)
    lines.append("| " + " | ".join(table.headers) + " |")
    lines.append("|---|" + "---:|" * (len(table.headers) - 1))
    for i, cells in enumerate(table.rows):
        shown = [f"**{c}**" if (i, j) in table.best else c for j, c in enumerate(cells)]
        lines.append("| " + " | ".join(shown) + " |")
    lines += ["", *notes(agg, table, tolerance), ""]
    return "\n".join(lines)


def notes(agg: list[dict[str, Any]], table: Table, tolerance: float) -> list[str]:
    """The lines under the table: column meanings, off-budget runs, controls and the frontiers."""
    ref = next((a["run"] for a in agg if a.get("method") == "single" and not a.get("control_of")), None)
    lines = [
        "Columns: params used = parameters the prediction uses (stored networks inference never runs, such as a "
        "subnetwork ensemble's parent, are not counted); FLOPs x single = inference FLOPs relative to the single "
        "backbone; sparse / nonzero = the same with masked (zero) weights skipped, for masked ensembles; "
        "train epoch-eq = training FLOPs in single-model epochs; "
        + (f"time x single = training wall time relative to {ref}; " if ref else "")
        + "overrun = spent / budget − 1 (! beyond the tolerance); gain pt = ensemble accuracy − mean member "
        "accuracy (points); disagree = mean pairwise top-1 disagreement; c- = mean over corruptions x severities "
        "(when evaluated).",
        "",
    ]
    if table.flagged:
        lines += [f"Off budget by more than {100 * tolerance:.0f}%: {', '.join(table.flagged)}.", ""]
    controls = [a for a in agg if a.get("control_of")]
    if controls:
        lines += [
            "Equal-FLOPs controls: "
            + ", ".join(
                f"{a['run']} (a single network with {a['control_of']}'s inference FLOPs, trained on the same budget)"
                for a in controls
            )
            + ".",
            "",
        ]
    for name, runs in frontiers(agg, tolerance).items():
        metric, _, col = name.partition(" vs ")
        label = dict(cost_axes(agg))[col]
        metric = "NLL" if metric == "nll" else metric
        lines.append(f"Pareto frontier, {metric} vs {label}: {', '.join(runs) or '-'}")
    lines.append(f"(costs within {100 * tolerance:.0f}% of each other count as equal)")
    return lines
