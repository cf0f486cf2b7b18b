"""Result tables generated from run directories (never typed by hand)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ensemblekit.bench.results import get_cost
from ensemblekit.errors import shorten
from ensemblekit.runs.directory import read_metrics
from ensemblekit.runs.record import columns

COLUMNS: list[tuple[str, str, str]] = [
    # (header, path in metrics.json, format): the record schema's "compare" fields (ensemblekit.runs.record)
    (c.label, c.path, c.format)
    for c in columns("compare")
    if not c.sparse
]


def _fmt(value: Any, spec: str) -> str:
    """``value`` formatted by ``spec``; ``-`` when missing or NaN, ``?`` when of the wrong type (an edited file)."""
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "-"
    if spec == "s":
        return shorten(value, 40) if not isinstance(value, str) else value[:40]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (spec.endswith("d") and isinstance(value, float))
    ):
        return "?"
    if spec == "%":
        return f"{100 * value:.2f}"
    return format(value, spec)


SPARSE_COLUMNS: list[tuple[str, str, str]] = [
    # the sparse costs (ensemblekit.metrics.sparse_costs), shown when a run reports them
    (c.label, c.path, c.format)
    for c in columns("compare")
    if c.sparse
]


_value = get_cost  # for a sparse-cost key, runs written before the shared schema are read too


def comparison_table(run_dirs: list[str | Path]) -> str:
    """A Markdown table with one row per run directory (method, costs, accuracy, NLL, ECE, diversity).

    ``params used`` counts the parameters the prediction uses (``unique params`` also counts stored networks that
    inference never runs, as a subnetwork ensemble's parent). ``disagree`` is the mean pairwise top-1 disagreement;
    ``Fort div`` divides it by the reference member's error (Fort et al., 2019), averaged over ordered pairs. When a
    run reports sparse costs (``fission``, ``subnetwork``), the sparse columns follow (``-`` for runs without masked
    weights).
    """
    records = [read_metrics(Path(run)) for run in run_dirs]
    columns = list(COLUMNS)
    if any(_value(r, path) is not None for r in records for _, path, _ in SPARSE_COLUMNS):
        at = 1 + next(i for i, c in enumerate(columns) if c[1] == "costs.train_epoch_equivalents")
        columns[at:at] = SPARSE_COLUMNS  # after the dense training cost
    header = "| run | " + " | ".join(h for h, _, _ in columns) + " |"
    sep = "|" + "---|" * (len(columns) + 1)
    rows = [header, sep]
    for run, record in zip(run_dirs, records, strict=True):
        cells = [_fmt(_value(record, path), spec) for _, path, spec in columns]
        rows.append(f"| {Path(run).name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
