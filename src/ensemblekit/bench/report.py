"""``ensemblekit report DIR``: results table, plots and a self-contained report of a suite's output directory.

Writes ``results.csv``, ``results.md``, ``plots/*.png|svg``, ``report.md`` (links the plots) and
``report.html`` (the plots embedded as base64 PNG, no network access needed to view it). Everything is
generated from the run directories; nothing is typed by hand.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ensemblekit.bench import plots
from ensemblekit.bench.results import aggregate, collect_rows, frontiers, results_markdown, write_csv

PLOT_TITLES = {
    "pareto": "Accuracy and NLL against training cost (Pareto frontier in red)",
    "params": "Accuracy against unique parameters",
    "reliability": "Reliability diagrams",
    "members": "Member vs ensemble accuracy",
    "diversity": "Diversity and ensemble gain",
    "interpolation": "Interpolation between two members",
}


def _first_seed_dirs(out: Path, status: dict[str, Any]) -> list[tuple[str, Path]]:
    seen, runs = set(), []
    order = {n: i for i, n in enumerate(status.get("order", []))}
    for e in sorted(status.get("runs", {}).values(), key=lambda e: (order.get(e["run"], 1 << 30), e["seed"])):
        if e["run"] in seen or e.get("state") != "done":
            continue
        seen.add(e["run"])
        runs.append((e["run"], out / e.get("dir", f"runs/{e['run']}/seed{e['seed']}")))
    return runs


def write_all(out: str | Path) -> dict[str, Any]:
    """Write results, plots and reports for the suite output directory ``out``; return what was written."""
    from ensemblekit.bench.run_suite import read_status

    out = Path(out)
    status = read_status(out)
    rows = collect_rows(out, status)
    write_csv(rows, out / "results.csv")
    agg = aggregate(rows)
    title = f"Suite {status.get('suite') or out.name}"
    table = results_markdown(agg, title)
    (out / "results.md").write_text(table)
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    runs = _first_seed_dirs(out, status)
    figures: dict[str, list[Path]] = {
        "pareto": plots.plot_pareto(agg, plot_dir),
        "params": plots.plot_params(agg, plot_dir),
        "reliability": plots.plot_reliability(runs, plot_dir),
        "members": plots.plot_members(agg, plot_dir),
        "diversity": plots.plot_diversity(agg, plot_dir),
        "interpolation": plots.plot_interpolation(runs, plot_dir),
    }
    figures = {k: v for k, v in figures.items() if v}
    failures = [e for e in status.get("runs", {}).values() if e.get("state") != "done"]
    (out / "report.md").write_text(_markdown(table, figures, failures, out))
    (out / "report.html").write_text(_html(title, table, figures, failures))
    return {"rows": len(rows), "figures": sorted(figures), "frontiers": frontiers(agg), "failures": len(failures)}


def _failures_md(failures: list[dict[str, Any]]) -> list[str]:
    if not failures:
        return []
    lines = ["## Runs that did not finish", ""]
    lines += [f"- {e['run']} seed {e['seed']}: {e.get('state')}: {e.get('error', '')}" for e in failures]
    return [*lines, ""]


def _markdown(table: str, figures: dict[str, list[Path]], failures: list[dict[str, Any]], out: Path) -> str:
    lines = [table, *_failures_md(failures)]
    for key, paths in figures.items():
        png = paths[0].relative_to(out).as_posix()
        lines += [f"## {PLOT_TITLES[key]}", "", f"![{key}]({png})", ""]
    return "\n".join(lines)


def _html(title: str, table: str, figures: dict[str, list[Path]], failures: list[dict[str, Any]]) -> str:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;"
        "text-align:right}td:first-child,td:nth-child(2){text-align:left}img{max-width:100%}</style>",
        "</head><body>",
    ]
    parts.append(_markdown_table_to_html(table))
    if failures:
        items = "".join(
            f"<li>{html.escape(e['run'])} seed {e['seed']}: {html.escape(str(e.get('error', e.get('state'))))}</li>"
            for e in failures
        )
        parts.append(f"<h2>Runs that did not finish</h2><ul>{items}</ul>")
    for key, paths in figures.items():
        data = base64.b64encode(paths[0].read_bytes()).decode()
        parts.append(f"<h2>{html.escape(PLOT_TITLES[key])}</h2><img alt='{key}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _markdown_table_to_html(text: str) -> str:
    """The small Markdown subset ``results_markdown`` writes (headings, one table, paragraphs) as HTML."""
    out, in_table = [], False
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-:"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    return "\n".join(out)
