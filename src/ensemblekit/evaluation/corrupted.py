"""Accuracy, NLL and ECE under CIFAR-10-C-style corruptions, generated on the fly in fixed-size chunks.

Protocol (uncertainty-baselines, Nado et al., 2021; Ovadia et al., 2019): evaluate the ensemble on the test
split corrupted by every corruption at every severity; report each (corruption, severity) cell, the mean
per severity (over corruptions), per corruption (over severities) and the mean over all cells.

The corrupted images of chunk ``i`` (``CHUNK`` consecutive test images) are drawn from a generator seeded
by ``(seed, corruption, severity, i)``, so results do not depend on the evaluation batch size and any
cell can be recomputed alone. The images are corrupted on the run's device (a GPU does the image work while
the random numbers still come from the same CPU generators, so CPU and GPU corrupt alike up to float
rounding) and stay there for the model.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ensemblekit.data import ImageTensors
from ensemblekit.data.corruptions import corrupt
from ensemblekit.data.loader import device_tensors
from ensemblekit.metrics import ensemble_metrics
from ensemblekit.runs.loading import LoadedRun

CHUNK = 1000
"""Images corrupted together (one generator per chunk)."""

CELL_METRICS: tuple[str, ...] = ("accuracy", "nll", "ece", "brier", "member_accuracy_mean", "disagreement")
"""The metrics kept per cell (definitions as in :func:`ensemblekit.metrics.ensemble_metrics`)."""


def chunk_generator(seed: int, name: str, severity: int, chunk: int) -> torch.Generator:
    """The CPU generator of one chunk: seeded by ``(seed, crc32(name), severity, chunk)`` via NumPy's SeedSequence."""
    state = np.random.SeedSequence([seed, zlib.crc32(name.encode()), severity, chunk]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def corrupted_split(
    split: ImageTensors, name: str, severity: int, seed: int = 0, device: torch.device | str = "cpu"
) -> ImageTensors:
    """The whole split corrupted by ``name`` at ``severity`` (chunked and seeded as in the module docstring).

    The images are corrupted on ``device`` (copied there once) and returned there; the random draws come from
    the chunks' CPU generators whatever the device.
    """
    images = device_tensors(split, torch.device(device))[0]
    parts = [
        corrupt(images[i : i + CHUNK], name, severity, chunk_generator(seed, name, severity, i // CHUNK))
        for i in range(0, len(split), CHUNK)
    ]
    return ImageTensors(torch.cat(parts), split.labels, list(split.classes))


def _mean(cells: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([c[k] for c in cells])) for k in cells[0]}


def _cell(probs: torch.Tensor, labels: torch.Tensor, combine: str) -> dict[str, float]:
    metrics = ensemble_metrics(probs, labels, combine=combine)
    return {k: float(metrics[k]) for k in CELL_METRICS}


def evaluate_corruptions(
    run: LoadedRun,
    names: list[str],
    severities: list[int],
    *,
    seed: int = 0,
    split: ImageTensors | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``run`` on ``split`` (default: its test split) under every corruption x severity.

    Returns:
        A JSON-ready dict: ``clean`` metrics, ``results[name][severity]``, ``per_corruption``,
        ``per_severity``, ``mean`` (over all cells) and ``timing`` (corruption vs model seconds).
    """
    split = run.data.test if split is None else split
    combine = run.ensemble.combine
    clean = _cell(run.member_probs(split), split.labels, combine)
    results: dict[str, dict[str, dict[str, float]]] = {}
    gen_seconds = model_seconds = 0.0
    for name in names:
        results[name] = {}
        for severity in severities:
            t0 = time.perf_counter()
            corrupted = corrupted_split(split, name, severity, seed, run.device)
            if run.device.type == "cuda":
                torch.cuda.synchronize()  # the corruption time ends when the device has finished
            t1 = time.perf_counter()
            probs = run.member_probs(corrupted)
            results[name][str(severity)] = _cell(probs, split.labels, combine)
            gen_seconds += t1 - t0
            model_seconds += time.perf_counter() - t1
        if progress is not None:
            accs = " ".join(f"{results[name][str(s)]['accuracy']:.3f}" for s in severities)
            progress(f"{name}: accuracy by severity {accs}")
    cells = [results[n][str(s)] for n in names for s in severities]
    n_images = len(split) * len(cells)
    return {
        "protocol": "mean over corruptions x severities (uncertainty-baselines)",
        "seed": seed,
        "num_images": len(split),
        "corruptions": list(names),
        "severities": list(severities),
        "metrics": list(CELL_METRICS),
        "clean": clean,
        "mean": _mean(cells),
        "per_severity": {str(s): _mean([results[n][str(s)] for n in names]) for s in severities},
        "per_corruption": {n: _mean([results[n][str(s)] for s in severities]) for n in names},
        "results": results,
        "timing": {
            "corruption_seconds": gen_seconds,
            "model_seconds": model_seconds,
            "corrupted_images": n_images,
            "corruption_images_per_second": n_images / gen_seconds if gen_seconds else float("nan"),
            "model_images_per_second": n_images / model_seconds if model_seconds else float("nan"),
        },
    }
