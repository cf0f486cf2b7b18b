"""Plots of a suite's results (PNG and SVG, matplotlib), drawn from the aggregated rows and the run directories.

* ``pareto``: accuracy and NLL against cost with the Pareto frontier (red rings; costs within the suite's
  budget-fitting tolerance count as equal). The cost is the training cost in epoch-equivalents (the MotherNets
  claim) or, in an equal-budget suite, where every run's training cost is the budget up to fitting noise, the
  inference FLOPs and the training wall time relative to the single run.
* ``params``: accuracy against the parameters used at inference: the MixtureEnsembles claim.
* ``reliability``: reliability diagrams of every run's first seed, with each bin's image count and the ECE.
* ``members``: mean member accuracy and ensemble accuracy per run, bars from 0, the gain written above.
* ``diversity``: disagreement against the ensemble's gain over its mean member.
* ``interpolation``: accuracy along the line between two members, for runs with ``interpolation.json``.

Each ``figure_*`` function returns a :class:`Plot` (the matplotlib Figure and the runs it leaves out, with why);
the runs left out are also written under the figure. :func:`draw_all` saves them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemblekit.bench.results import DEFAULT_TOLERANCE, cost_axes, pareto_front

FRONT_COLOR = "tab:red"
LABEL_OFFSETS = [(5, 4), (5, -11), (-5, 4), (-5, -11), (5, 14), (-5, 14), (5, -21), (-5, -21), (12, -4), (-12, -4)]


@dataclass
class Plot:
    """A drawn figure and the runs it leaves out (``"run: why"``)."""

    key: str
    figure: Any
    left_out: list[str] = field(default_factory=list)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean(a: dict[str, Any], key: str) -> float | None:
    v = a.get(key)
    return None if v is None else v[0]


def _points(agg, x: str, y: str, why: str, left_out: list[str]) -> list[tuple[str, float, float]]:
    pts = []
    for a in agg:
        vx, vy = _mean(a, x), _mean(a, y)
        if vx is None or vy is None or vx != vx or vy != vy:
            left_out.append(f"{a['run']}: {why}")
        else:
            pts.append((a["run"], vx, vy))
    return pts


def _note_left_out(fig, left_out: list[str]) -> None:
    if left_out:
        text = "not shown: " + "; ".join(left_out)
        fig.text(0.01, 0.0, text, fontsize=7, color="dimgray", ha="left", va="top", wrap=True)


def place_labels(ax, pts: list[tuple[str, float, float]], fontsize: float = 7) -> list[Any]:
    """Annotate each point with its name, choosing for each label the first offset that overlaps nothing drawn.

    Greedy, in display coordinates: a label must not overlap an earlier label nor cover another point's marker;
    when every offset collides, the least-overlapping one is kept.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    markers = [ax.transData.transform((x, y)) for _, x, y in pts]
    placed, texts = [], []
    for n, x, y in sorted(pts, key=lambda p: (p[1], p[2])):
        best = None
        for dx, dy in LABEL_OFFSETS:
            t = ax.annotate(n, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                            ha="left" if dx > 0 else "right")  # fmt: skip
            box = t.get_window_extent(renderer).expanded(1.05, 1.1)
            own = ax.transData.transform((x, y))
            hits = sum(box.overlaps(b) for b in placed) + sum(
                box.contains(*m) for m in markers if tuple(m) != tuple(own)
            )
            if best is None or hits < best[0]:
                if best is not None:
                    best[1].remove()
                best = (hits, t, box)
            else:
                t.remove()
            if hits == 0:
                break
        placed.append(best[2])
        texts.append(best[1])
    return texts


def _scatter_with_front(ax, pts, maximize: bool, xlabel: str, ylabel: str, tolerance: float, logx=False) -> None:
    _, xs, ys = zip(*pts, strict=True)
    ax.scatter(xs, ys, zorder=3, color="tab:blue", s=22, label="run")
    front = pareto_front(list(xs), list(ys), maximize=maximize, tolerance=tolerance)
    fx, fy = [xs[i] for i in front], [ys[i] for i in front]
    if len(front) > 1:
        ax.plot(fx, fy, color=FRONT_COLOR, lw=1.0, alpha=0.7, zorder=2)
    label = f"Pareto frontier ({len(front)} of {len(pts)}"
    label += f"; costs within {100 * tolerance:.0f}% equal)" if tolerance else ")"
    ax.scatter(fx, fy, s=110, facecolors="none", edgecolors=FRONT_COLOR, lw=1.5, zorder=4, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.12)
    ax.legend(fontsize=7, loc="best")
    place_labels(ax, pts)


def figure_pareto(agg: list[dict[str, Any]], tolerance: float = DEFAULT_TOLERANCE) -> Plot | None:
    """Accuracy (top) and NLL (bottom) against each cost axis of :func:`ensemblekit.bench.results.cost_axes`."""
    axes_spec = cost_axes(agg)
    left_out: list[str] = []
    panels = []
    for col, label in axes_spec:
        acc = [(n, x, 100 * y) for n, x, y in _points(agg, col, "accuracy", f"no {col} or accuracy", left_out)]
        nll = _points(agg, col, "nll", f"no {col} or NLL", [])
        panels.append((col, label, acc, nll))
    if not any(p[2] for p in panels):
        return None
    plt = _plt()
    cols = len(panels)
    fig, axes = plt.subplots(2, cols, figsize=(6 * cols, 8), squeeze=False)
    for k, (_, label, acc, nll) in enumerate(panels):
        if acc:
            _scatter_with_front(axes[0][k], acc, True, label, "accuracy (%)", tolerance)
        if nll:
            _scatter_with_front(axes[1][k], nll, False, label, "NLL", tolerance)
    what = " and ".join(label.split(" (")[0] for _, label, _, _ in panels)
    fig.suptitle(f"Accuracy and NLL against {what}")
    fig.tight_layout()
    left_out = sorted(set(left_out))
    _note_left_out(fig, left_out)
    return Plot("pareto", fig, left_out)


def _count_formatter(value: float, _pos=None) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:g}{suffix}"
    return f"{value:g}"


def figure_params(agg: list[dict[str, Any]], tolerance: float = DEFAULT_TOLERANCE) -> Plot | None:
    """Accuracy against the parameters used at inference (``unique_params`` for runs written before that count).

    A log axis only when the counts span more than a factor of 10; ticks at 1, 2 and 5 per decade, written 50k, 1.2M.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

    left_out: list[str] = []
    pts = []
    for a in agg:
        x = _mean(a, "inference_params") or _mean(a, "unique_params")
        y = _mean(a, "accuracy")
        if x is None or y is None:
            left_out.append(f"{a['run']}: no parameter count or accuracy")
        else:
            pts.append((a["run"], x, 100 * y))
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    xs = [p[1] for p in pts]
    logx = max(xs) > 10 * min(xs)
    _scatter_with_front(ax, pts, True, "parameters used at inference", "accuracy (%)", tolerance, logx=logx)
    if logx:
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, p: ""))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.xaxis.set_major_formatter(FuncFormatter(_count_formatter))
    ax.set_title("Accuracy against parameters used at inference")
    fig.tight_layout()
    _note_left_out(fig, left_out)
    return Plot("params", fig, left_out)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def figure_reliability(runs: list[tuple[str, Path]], min_count: int = 10) -> Plot | None:
    """Reliability diagrams (bin accuracy against confidence, the diagonal dashed) of each run's first seed.

    Each bar's image count is written above it; bins with fewer than ``min_count`` images are drawn pale and
    hatched (their accuracy is mostly noise). The title gives the ECE and the number of test images.
    """
    data, left_out = [], []
    for name, run_dir in runs:
        record = _read_json(run_dir / "metrics.json") or {}
        rel = record.get("reliability")
        if rel and rel.get("edges") and rel.get("accuracy"):
            data.append((name, rel, (record.get("metrics") or {}).get("ece")))
        else:
            left_out.append(f"{name}: no reliability data in metrics.json")
    if not data:
        return None
    plt = _plt()
    cols = min(4, len(data))
    rows = (len(data) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(data) :]:
        ax.axis("off")
    for ax, (name, rel, ece) in zip(axes.flat, data, strict=False):
        edges = rel["edges"]
        counts = rel.get("count") or [None] * (len(edges) - 1)
        for lo, hi, acc, n in zip(edges[:-1], edges[1:], rel["accuracy"], counts, strict=False):
            if acc is None or not n:
                continue
            few = n < min_count
            ax.bar(lo, acc, width=hi - lo, align="edge", edgecolor="black", lw=0.4,
                   color="tab:blue", alpha=0.3 if few else 0.85, hatch="//" if few else None)  # fmt: skip
            ax.text((lo + hi) / 2, min(acc, 0.9) + 0.02, str(n), ha="center", va="bottom", fontsize=5.5,
                    rotation=90)  # fmt: skip
        ax.plot([0, 1], [0, 1], "--", color="gray", lw=1)
        total = sum(n for n in counts if n)
        title = name if ece is None else f"{name}\nECE {ece:.3f}, {total} images"
        ax.set_title(title, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"Reliability (numbers: images per bin; pale bins: fewer than {min_count})", fontsize=9)
    fig.tight_layout()
    _note_left_out(fig, left_out)
    return Plot("reliability", fig, left_out)


def figure_members(agg: list[dict[str, Any]]) -> Plot | None:
    """Mean member accuracy and ensemble accuracy per run (grouped bars from 0; the gain in points above them)."""
    left_out: list[str] = []
    pts = _points(agg, "member_accuracy", "accuracy", "no member or ensemble accuracy", left_out)
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(pts)), 4.2))
    xs = list(range(len(pts)))
    ax.bar([x - 0.2 for x in xs], [100 * p[1] for p in pts], width=0.4, label="mean member", color="tab:gray")
    ax.bar([x + 0.2 for x in xs], [100 * p[2] for p in pts], width=0.4, label="ensemble", color="tab:blue")
    top = max(max(p[1], p[2]) for p in pts) * 100
    for x, (_, member, ens) in zip(xs, pts, strict=True):
        ax.text(x, 100 * max(member, ens) + 0.01 * top, f"{100 * (ens - member):+.1f}", ha="center", va="bottom",
                fontsize=7)  # fmt: skip
    ax.set_xticks(xs, [p[0] for p in pts], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, min(100.0, top * 1.12))
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Member vs ensemble accuracy (gain in points above the bars)")
    fig.tight_layout()
    _note_left_out(fig, left_out)
    return Plot("members", fig, left_out)


def figure_diversity(agg: list[dict[str, Any]]) -> Plot | None:
    """Disagreement against the ensemble's accuracy gain over its mean member."""
    left_out: list[str] = []
    several = [a for a in agg if (_mean(a, "members") or 0) != 1]
    left_out += [f"{a['run']}: one member" for a in agg if a not in several]
    pts = [
        (n, x, 100 * y) for n, x, y in _points(several, "disagreement", "ensemble_gain", "no disagreement", left_out)
    ]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter([p[1] for p in pts], [p[2] for p in pts], color="tab:blue", zorder=3)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("pairwise disagreement")
    ax.set_ylabel("ensemble − mean member accuracy (points)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.15)
    ax.set_title("Diversity and ensemble gain")
    place_labels(ax, pts)
    fig.tight_layout()
    _note_left_out(fig, left_out)
    return Plot("diversity", fig, left_out)


def figure_interpolation(runs: list[tuple[str, Path]], why: dict[str, str] | None = None) -> Plot | None:
    """Accuracy along the parameter-space line between two members (runs with ``interpolation.json``).

    The legend and the title name the members (``interpolation.json`` ``members``); ``why`` gives the reason a run
    has no curve (``suite.json``'s ``interpolation`` entry), shown with the runs left out.
    """
    why = why or {}
    curves, left_out = [], []
    for name, run_dir in runs:
        record = _read_json(run_dir / "interpolation.json")
        if not record or not isinstance(record.get("curve"), list):
            left_out.append(f"{name}: {why.get(name, 'no interpolation.json')}")
            continue
        curves.append((name, record.get("members") or [0, 1], record["curve"]))
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, (a, b), curve in curves:
        ax.plot([p["lambda"] for p in curve], [100 * p["accuracy"] for p in curve], marker="o", ms=3,
                label=f"{name} (member {a} → {b})")  # fmt: skip
    pairs = {tuple(m) for _, m, _ in curves}
    a, b = next(iter(pairs)) if len(pairs) == 1 else ("a", "b")
    ax.set_xlabel(f"λ (θ = (1 − λ)·θ_member{a} + λ·θ_member{b})")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(f"Interpolation between member {a} (λ=0) and member {b} (λ=1)")
    fig.tight_layout()
    _note_left_out(fig, left_out)
    return Plot("interpolation", fig, left_out)


def save(plot: Plot, out: Path) -> list[Path]:
    """Write ``out/<key>.png`` and ``.svg``; close the figure."""
    paths = [out / f"{plot.key}.png", out / f"{plot.key}.svg"]
    for p in paths:
        plot.figure.savefig(p, dpi=110, bbox_inches="tight")
    _plt().close(plot.figure)
    return paths


def draw_all(
    agg: list[dict[str, Any]],
    runs: list[tuple[str, Path]],
    out: Path,
    tolerance: float = DEFAULT_TOLERANCE,
    why_no_interpolation: dict[str, str] | None = None,
) -> dict[str, tuple[list[Path], list[str]]]:
    """Draw and save every plot that has data: ``{key: (paths, runs left out)}``."""
    out.mkdir(exist_ok=True)
    made = [
        figure_pareto(agg, tolerance),
        figure_params(agg, tolerance),
        figure_reliability(runs),
        figure_members(agg),
        figure_diversity(agg),
        figure_interpolation(runs, why_no_interpolation),
    ]
    return {p.key: (save(p, out), p.left_out) for p in made if p is not None}
