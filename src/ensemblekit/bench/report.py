"""``ensemblekit report DIR``: results table, plots and a self-contained report of a suite's output directory.

Writes ``results.csv``, ``results.md``, ``plots/*.png|svg``, ``report.md`` (links the plots) and
``report.html`` (the plots embedded as base64 PNG, no network access needed to view it). Everything is
generated from the run directories; nothing is typed by hand. The report opens with what the suite is (its
description, data set, backbone, budget, seeds, corruption settings), when it was made and by which ensemblekit
version; the table links every run directory and highlights each metric's best value; every plot lists the runs it
leaves out.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from pathlib import Path
from typing import Any

import yaml

from ensemblekit.bench import plots
from ensemblekit.bench.results import (
    DEFAULT_TOLERANCE,
    aggregate,
    collect_rows,
    frontiers,
    notes,
    results_markdown,
    results_table,
    write_csv,
)

PLOT_TITLES = {
    "pareto": "Accuracy and NLL against cost (Pareto frontier: red rings)",
    "params": "Accuracy against parameters used at inference",
    "reliability": "Reliability diagrams",
    "members": "Member vs ensemble accuracy",
    "diversity": "Diversity and ensemble gain",
    "interpolation": "Interpolation between two members",
}

CSS = (
    "body{font-family:sans-serif;max-width:1250px;margin:1.5em auto;padding:0 1em;color:#222}"
    "h1{margin-bottom:.2em}h2{margin:1.2em 0 .4em}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
    "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
    "td.best{background:#d9f2d9;font-weight:bold}td.over{background:#fbe3d6}"
    "dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:14px}"
    "dl.facts dt{font-weight:bold}dl.facts dd{margin:0}"
    "p.note{font-size:12px;color:#555}"
    "img{display:block;max-width:100%;height:auto}figure{margin:0 0 1em 0}"
)


def _entries(status: dict[str, Any]) -> list[dict[str, Any]]:
    order = {n: i for i, n in enumerate(status.get("order", []))}
    return sorted(status.get("runs", {}).values(), key=lambda e: (order.get(e["run"], 1 << 30), e["seed"]))


def _run_dir(e: dict[str, Any]) -> str:
    return e.get("dir", f"runs/{e['run']}/seed{e['seed']}")


def _first_seed_dirs(out: Path, status: dict[str, Any]) -> list[tuple[str, Path]]:
    seen, runs = set(), []
    for e in _entries(status):
        if e["run"] in seen or e.get("state") != "done":
            continue
        seen.add(e["run"])
        runs.append((e["run"], out / _run_dir(e)))
    return runs


def _read_suite(out: Path) -> dict[str, Any]:
    """The suite as last given (``suite.yaml``), as a plain dict ({} when unreadable)."""
    try:
        raw = yaml.safe_load((out / "suite.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _first_metrics(out: Path, status: dict[str, Any]) -> dict[str, Any]:
    for e in _entries(status):
        try:
            return json.loads((out / _run_dir(e) / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
    return {}


def facts(out: Path, status: dict[str, Any]) -> list[tuple[str, str]]:
    """What the suite is, from ``suite.yaml``, ``suite.json`` and a run's ``metrics.json``: ``(label, text)``."""
    import ensemblekit

    suite = _read_suite(out)
    base = suite.get("base") or {}
    data, model = base.get("data") or {}, base.get("model") or {}
    record = _first_metrics(out, status)
    sizes = record.get("data") or {}
    dataset = data.get("name") or record.get("dataset") or "cifar10 (default)"
    if sizes:
        dataset += f": {sizes.get('train_size')} training, {sizes.get('test_size')} test images"
        if sizes.get("val_size"):
            dataset += f", {sizes['val_size']} validation"
    backbone = model.get("name") or record.get("backbone") or "resnet20 (default)"
    if model.get("width") is not None:
        backbone += f", width {model['width']}"
    budget = suite.get("budget")
    unit = "seconds of training" if suite.get("budget_unit") == "seconds" else "single-model epoch-equivalents"
    tol = suite.get("budget_tolerance", DEFAULT_TOLERANCE)
    budget_text = "as configured per run" if budget is None else f"{budget:g} {unit} per run"
    own = [r["name"] for r in suite.get("runs") or [] if isinstance(r, dict) and r.get("budget") is not None]
    if own:
        budget_text += f" ({', '.join(own)}: their own)"
    budget_text += f"; fitting tolerance {100 * tol:.0f}%"
    if suite.get("equal_flops_control"):
        budget_text += "; equal-FLOPs controls (.control runs)"
    seeds = sorted({e["seed"] for e in status.get("runs", {}).values()})
    corr = suite.get("corruptions")
    if corr:
        corr_text = (
            f"{', '.join(map(str, corr.get('names', ['all'])))}; severities "
            f"{', '.join(map(str, corr.get('severities', [1, 2, 3, 4, 5])))}; "
            f"{corr.get('max_images') or 'all'} test images; seed {corr.get('seed', 0)}; "
            f"precision {corr.get('precision', '32')}"
        )
    else:
        corr_text = "not evaluated"
    finished = [
        (out / _run_dir(e) / "metrics.json").stat().st_mtime
        for e in _entries(status)
        if (out / _run_dir(e) / "metrics.json").is_file()
    ]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if finished:
        first, last = (
            dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M") for t in (min(finished), max(finished))
        )
        when += f" (runs finished {first} – {last} UTC)"
    rows = [
        ("Suite", str(status.get("suite") or suite.get("name") or out.name)),
        ("Description", str(suite.get("description") or status.get("description") or "-")),
        ("Data set", dataset),
        ("Backbone", backbone),
        ("Budget", budget_text),
        ("Seeds", f"{len(seeds)} (train.seed {', '.join(map(str, seeds))})" if seeds else "-"),
        ("Corruptions", corr_text),
        ("Generated", when),
        ("ensemblekit", ensemblekit.__version__),
    ]
    return rows


def write_all(out: str | Path) -> dict[str, Any]:
    """Write results, plots and reports for the suite output directory ``out``; return what was written."""
    from ensemblekit.bench.suite_status import read_status

    out = Path(out)
    status = read_status(out)
    tolerance = float(_read_suite(out).get("budget_tolerance", DEFAULT_TOLERANCE))
    rows = collect_rows(out, status)
    write_csv(rows, out / "results.csv")
    agg = aggregate(rows)
    title = f"Suite {status.get('suite') or out.name}"
    (out / "results.md").write_text(results_markdown(agg, title, tolerance))
    why = {e["run"]: e["interpolation"] for e in status.get("runs", {}).values() if e.get("interpolation")}
    figures = plots.draw_all(agg, _first_seed_dirs(out, status), out / "plots", tolerance, why)
    failures = [e for e in status.get("runs", {}).values() if e.get("state") != "done"]
    info = facts(out, status)
    (out / "report.md").write_text(_markdown(title, info, agg, tolerance, figures, failures, out))
    (out / "report.html").write_text(_html(title, info, agg, tolerance, figures, failures, out, status))
    return {
        "rows": len(rows),
        "figures": sorted(figures),
        "frontiers": frontiers(agg, tolerance),
        "failures": len(failures),
    }


def _failures_md(failures: list[dict[str, Any]]) -> list[str]:
    if not failures:
        return []
    lines = ["## Runs that did not finish", ""]
    lines += [f"- {e['run']} seed {e['seed']}: {e.get('state')}: {e.get('error', '')}" for e in failures]
    return [*lines, ""]


def _markdown(title, info, agg, tolerance, figures, failures, out: Path) -> str:
    lines = [results_markdown(agg, title, tolerance).replace(f"# {title}\n", f"# {title}\n\n" + _facts_md(info), 1)]
    lines += _failures_md(failures)
    for key, (paths, _) in figures.items():  # the runs left out are written under the plot itself
        png = paths[0].relative_to(out).as_posix()
        lines += [f"## {PLOT_TITLES[key]}", "", f"![{key}]({png})", ""]
    return "\n".join(lines)


def _facts_md(info: list[tuple[str, str]]) -> str:
    return "\n".join(f"- **{k}**: {v}" for k, v in info) + "\n"


def _table_html(agg, tolerance: float, out: Path, status: dict[str, Any]) -> str:
    table = results_table(agg, tolerance)
    dirs: dict[str, list[tuple[int, str]]] = {}
    for e in _entries(status):
        if (out / _run_dir(e) / "metrics.json").is_file():
            dirs.setdefault(e["run"], []).append((e["seed"], _run_dir(e)))
    parts = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table.headers) + "</tr>"]
    for i, (a, cells) in enumerate(zip(agg, table.rows, strict=True)):
        links = dirs.get(a["run"], [])
        first = html.escape(cells[0])
        if len(links) == 1:
            first = f"<a href='{html.escape(links[0][1])}/'>{first}</a>"
        elif links:
            first += " " + " ".join(f"<a href='{html.escape(d)}/'>s{s}</a>" for s, d in links)
        tds = [f"<td>{first}</td>"]
        for j, c in enumerate(cells[1:], 1):
            cls = " class='best'" if (i, j) in table.best else " class='over'" if (i, j) in table.off_budget else ""
            tds.append(f"<td{cls}>{html.escape(c)}</td>")
        parts.append("<tr>" + "".join(tds) + "</tr>")
    parts.append("</table>")
    parts += [f"<p class='note'>{html.escape(line)}</p>" for line in notes(agg, table, tolerance) if line.strip()]
    return "\n".join(parts)


def _html(title, info, agg, tolerance, figures, failures, out: Path, status: dict[str, Any]) -> str:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<dl class='facts'>"
        + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in info)
        + "</dl>",
        "<h2>Results</h2>",
        "<p class='note'>Green: the best value of each metric; orange: a run off its budget by more than the "
        "fitting tolerance. Run names link to their run directories.</p>",
        _table_html(agg, tolerance, out, status),
    ]
    if failures:
        items = "".join(
            f"<li>{html.escape(e['run'])} seed {e['seed']}: {html.escape(str(e.get('error', e.get('state'))))}</li>"
            for e in failures
        )
        parts.append(f"<h2>Runs that did not finish</h2><ul>{items}</ul>")
    for key, (paths, _) in figures.items():
        data = base64.b64encode(paths[0].read_bytes()).decode()
        parts.append(  # the runs left out are written under the plot itself
            f"<figure><h2>{html.escape(PLOT_TITLES[key])}</h2><img alt='{key}' src='data:image/png;base64,{data}'>"
            "</figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
