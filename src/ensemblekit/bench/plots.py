"""Plots of a suite's results (PNG and SVG, matplotlib), drawn from the aggregated rows and the run directories.

* ``pareto``: accuracy and NLL against training cost (epoch-equivalents) with the Pareto frontier drawn: the
  MotherNets claim (a better accuracy/training-cost trade-off).
* ``params``: accuracy against unique parameters: the MixtureEnsembles claim.
* ``reliability``: reliability diagrams (accuracy per confidence bin) of every run's first seed.
* ``members``: member accuracy (mean) against ensemble accuracy per run.
* ``diversity``: disagreement against the ensemble's gain over its mean member.
* ``interpolation``: accuracy along the line between two members, for runs with ``interpolation.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ensemblekit.bench.results import pareto_front


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return paths


def _mean(a: dict[str, Any], key: str) -> float | None:
    v = a.get(key)
    return None if v is None else v[0]


def _points(agg: list[dict[str, Any]], x: str, y: str) -> list[tuple[str, float, float]]:
    return [(a["run"], _mean(a, x), _mean(a, y)) for a in agg if _mean(a, x) is not None and _mean(a, y) is not None]


def _scatter_with_front(ax, pts, maximize: bool, xlabel: str, ylabel: str, logx: bool = False) -> None:
    _, xs, ys = zip(*pts)
    ax.scatter(xs, ys, zorder=3)
    for n, x, y in pts:
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    front = pareto_front(list(xs), list(ys), maximize=maximize)
    ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="tab:red", lw=1.2, label="Pareto")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_pareto(agg: list[dict[str, Any]], out: Path) -> list[Path]:
    """Accuracy and NLL against training epoch-equivalents, Pareto frontiers in red."""
    acc = [(n, x, 100 * y) for n, x, y in _points(agg, "train_epoch_equivalents", "accuracy")]
    nll = _points(agg, "train_epoch_equivalents", "nll")
    if not acc:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    _scatter_with_front(axes[0], acc, True, "training cost (single-model epoch-equivalents)", "accuracy (%)")
    _scatter_with_front(axes[1], nll, False, "training cost (single-model epoch-equivalents)", "NLL")
    fig.suptitle("Accuracy and NLL against training cost")
    return _save(fig, out / "pareto")


def plot_params(agg: list[dict[str, Any]], out: Path) -> list[Path]:
    """Accuracy against unique parameters (log scale), frontier in red."""
    pts = [(n, x, 100 * y) for n, x, y in _points(agg, "unique_params", "accuracy")]
    if not pts:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    _scatter_with_front(ax, pts, True, "unique parameters", "accuracy (%)", logx=True)
    ax.set_title("Accuracy against parameters")
    return _save(fig, out / "params")


def plot_reliability(runs: list[tuple[str, Path]], out: Path) -> list[Path]:
    """Reliability diagrams (bin accuracy vs bin confidence, with the diagonal) of each run's first seed."""
    data = []
    for name, run_dir in runs:
        try:
            rel = json.loads((run_dir / "metrics.json").read_text()).get("reliability")
        except (OSError, ValueError):
            rel = None
        if rel:
            data.append((name, rel))
    if not data:
        return []
    plt = _plt()
    cols = min(4, len(data))
    rows = (len(data) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(data) :]:
        ax.axis("off")
    for ax, (name, rel) in zip(axes.flat, data):
        edges = rel["edges"]
        width = edges[1] - edges[0]
        acc = [a if a is not None else 0.0 for a in rel["accuracy"]]
        ax.bar(edges[:-1], acc, width=width, align="edge", edgecolor="black", lw=0.4, label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="gray", lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
    fig.tight_layout()
    return _save(fig, out / "reliability")


def plot_members(agg: list[dict[str, Any]], out: Path) -> list[Path]:
    """Mean member accuracy and ensemble accuracy per run (grouped bars)."""
    pts = _points(agg, "member_accuracy", "accuracy")
    if not pts:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(pts)), 4))
    xs = range(len(pts))
    ax.bar([x - 0.2 for x in xs], [100 * p[1] for p in pts], width=0.4, label="mean member")
    ax.bar([x + 0.2 for x in xs], [100 * p[2] for p in pts], width=0.4, label="ensemble")
    ax.set_xticks(list(xs), [p[0] for p in pts], rotation=45, ha="right", fontsize=8)
    low = min(min(p[1], p[2]) for p in pts) * 100
    ax.set_ylim(max(0, low - 5), None)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    ax.set_title("Member vs ensemble accuracy")
    return _save(fig, out / "members")


def plot_diversity(agg: list[dict[str, Any]], out: Path) -> list[Path]:
    """Disagreement against the ensemble's accuracy gain over its mean member."""
    pts = []
    for a in agg:
        d, acc, mem = _mean(a, "disagreement"), _mean(a, "accuracy"), _mean(a, "member_accuracy")
        if d is not None and acc is not None and mem is not None and d == d:
            pts.append((a["run"], d, 100 * (acc - mem)))
    if not pts:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter([p[1] for p in pts], [p[2] for p in pts])
    for n, x, y in pts:
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("pairwise disagreement")
    ax.set_ylabel("ensemble - mean member accuracy (points)")
    ax.grid(alpha=0.3)
    ax.set_title("Diversity and ensemble gain")
    return _save(fig, out / "diversity")


def plot_interpolation(runs: list[tuple[str, Path]], out: Path) -> list[Path]:
    """Accuracy along the parameter-space line between two members (runs with ``interpolation.json``)."""
    curves = []
    for name, run_dir in runs:
        path = run_dir / "interpolation.json"
        if path.is_file():
            try:
                curves.append((name, json.loads(path.read_text())["curve"]))
            except (OSError, ValueError, KeyError):
                continue
    if not curves:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, curve in curves:
        ax.plot([p["lambda"] for p in curve], [100 * p["accuracy"] for p in curve], marker="o", ms=3, label=name)
    ax.set_xlabel("lambda (member a -> member b)")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title("Interpolation between two members")
    return _save(fig, out / "interpolation")
