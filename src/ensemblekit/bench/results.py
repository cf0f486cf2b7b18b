"""Results of a suite, generated from its run directories (never typed by hand).

``results.csv`` has one row per run and seed; ``results.md`` is a table in the form of the papers' tables
(mean ± std over seeds) with the Pareto frontiers named.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

# (column, path in metrics.json or in corruptions.json as "corruptions:<path>")
FIELDS: list[tuple[str, str]] = [
    ("method", "method"),
    ("members", "num_members"),
    ("params", "costs.params"),
    ("unique_params", "costs.unique_params"),
    ("inference_flops_x_single", "costs.inference_flops_vs_single"),
    ("train_epoch_equivalents", "costs.train_epoch_equivalents"),
    ("train_seconds", "costs.train_seconds"),
    ("accuracy", "metrics.accuracy"),
    ("nll", "metrics.nll"),
    ("ece", "metrics.ece"),
    ("brier", "metrics.brier"),
    ("member_accuracy", "metrics.member_accuracy_mean"),
    ("disagreement", "metrics.disagreement"),
    ("normalized_disagreement", "metrics.normalized_disagreement"),
    ("corrupted_accuracy", "corruptions:mean.accuracy"),
    ("corrupted_nll", "corruptions:mean.nll"),
    ("corrupted_ece", "corruptions:mean.ece"),
]
NUMERIC = [name for name, _ in FIELDS if name != "method"]

# The Markdown table: (header, column, format; "%" = percent with 2 decimals)
TABLE: list[tuple[str, str, str]] = [
    ("M", "members", "d"),
    ("params", "unique_params", ",.0f"),
    ("FLOPs x single", "inference_flops_x_single", ".2f"),
    ("train epoch-eq", "train_epoch_equivalents", ".1f"),
    ("train s", "train_seconds", ".0f"),
    ("acc %", "accuracy", "%"),
    ("NLL", "nll", ".3f"),
    ("ECE", "ece", ".3f"),
    ("Brier", "brier", ".3f"),
    ("disagree", "disagreement", ".3f"),
    ("c-acc %", "corrupted_accuracy", "%"),
    ("c-NLL", "corrupted_nll", ".3f"),
    ("c-ECE", "corrupted_ece", ".3f"),
]


def get_path(record: dict[str, Any], path: str) -> Any:
    """``record["a"]["b"]`` for ``path = "a.b"``; ``None`` where a key is missing."""
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_row(run_dir: Path, run: str, seed: int) -> dict[str, Any] | None:
    """One results row from a finished run directory (``None`` when it has no metrics.json)."""
    metrics = _read_json(run_dir / "metrics.json")
    if not metrics:
        return None
    sources = {"": metrics, "corruptions": _read_json(run_dir / "corruptions.json")}
    row: dict[str, Any] = {"run": run, "seed": seed}
    for name, path in FIELDS:
        source, _, key = path.rpartition(":")
        row[name] = get_path(sources[source], key)
    return row


def collect_rows(out: Path, status: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of every finished run and seed of a suite, in the suite's order."""
    order = {name: i for i, name in enumerate(status.get("order", []))}
    entries = sorted(status.get("runs", {}).values(), key=lambda e: (order.get(e["run"], 1 << 30), e["seed"]))
    rows = []
    for e in entries:
        row = run_row(out / e.get("dir", f"runs/{e['run']}/seed{e['seed']}"), e["run"], e["seed"])
        if row is not None:
            rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """``results.csv``: one row per run and seed, every field."""
    columns = ["run", "seed"] + [name for name, _ in FIELDS]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run name: ``method``, ``seeds`` and, for every numeric field, ``(mean, std)`` over seeds.

    The std is the sample standard deviation (0 with one seed); a field missing in every seed is ``None``.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["run"], []).append(row)
    out = []
    for run, group in groups.items():
        agg: dict[str, Any] = {"run": run, "method": group[0]["method"], "seeds": len(group)}
        for name in NUMERIC:
            values = [float(r[name]) for r in group if isinstance(r.get(name), (int, float))]
            values = [v for v in values if not math.isnan(v)]
            if not values:
                agg[name] = None
            else:
                agg[name] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        out.append(agg)
    return out


def pareto_front(costs: list[float], values: list[float], maximize: bool = True) -> list[int]:
    """Indices of the points no other point dominates (cost <= and value >= / <=, one of them strictly).

    Sorted by cost. Used for accuracy (maximised) and NLL (minimised) against training cost.
    """
    sign = 1.0 if maximize else -1.0
    pts = [(c, sign * v, i) for i, (c, v) in enumerate(zip(costs, values))]
    front = []
    for c, v, i in pts:
        dominated = any((c2 <= c and v2 >= v) and (c2 < c or v2 > v) for c2, v2, _ in pts)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (costs[i], -sign * values[i]))


def _cell(value: Any, spec: str, seeds: int) -> str:
    if value is None:
        return "-"
    mean, std = value
    if spec == "%":
        mean, std, spec = 100 * mean, 100 * std, ".2f"
    if spec == "d":
        spec = ".0f"
    text = format(mean, spec)
    return f"{text} ± {format(std, spec)}" if seeds > 1 else text


def frontiers(agg: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Run names on the accuracy-vs-training-cost and NLL-vs-training-cost Pareto frontiers."""
    usable = [a for a in agg if a.get("train_epoch_equivalents") and a.get("accuracy") and a.get("nll")]
    cost = [a["train_epoch_equivalents"][0] for a in usable]
    acc = pareto_front(cost, [a["accuracy"][0] for a in usable], maximize=True)
    nll = pareto_front(cost, [a["nll"][0] for a in usable], maximize=False)
    return {"accuracy": [usable[i]["run"] for i in acc], "nll": [usable[i]["run"] for i in nll]}


def results_markdown(agg: list[dict[str, Any]], title: str = "Results") -> str:
    """The results table (mean ± std over seeds) and the Pareto frontiers, as Markdown."""
    seeds = max((a["seeds"] for a in agg), default=1)
    lines = [f"# {title}", ""]
    if seeds > 1:
        lines += [f"Mean ± standard deviation over {seeds} seeds.", ""]
    lines.append("| run | method | " + " | ".join(h for h, _, _ in TABLE) + " |")
    lines.append("|---|---|" + "---:|" * len(TABLE))
    for a in agg:
        cells = [_cell(a.get(col), spec, a["seeds"]) for _, col, spec in TABLE]
        lines.append(f"| {a['run']} | {a['method']} | " + " | ".join(cells) + " |")
    front = frontiers(agg)
    lines += [
        "",
        "Columns: params = unique parameters; FLOPs x single = inference FLOPs relative to the single backbone; "
        "train epoch-eq = training FLOPs in single-model epochs; c- = mean over corruptions x severities "
        "(when evaluated).",
        "",
        f"Pareto frontier, accuracy vs training cost: {', '.join(front['accuracy']) or '-'}",
        f"Pareto frontier, NLL vs training cost: {', '.join(front['nll']) or '-'}",
        "",
    ]
    return "\n".join(lines)
