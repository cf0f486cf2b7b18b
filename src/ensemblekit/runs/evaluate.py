"""Evaluate a trained ensemble: test/validation metrics, ``ensemblekit evaluate`` and ``ensemblekit interpolate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ensemblekit.analysis.interpolation import interpolate_members
from ensemblekit.atomic import write_json
from ensemblekit.data import DataBundle
from ensemblekit.ensemble import Ensemble
from ensemblekit.errors import UserError
from ensemblekit.metrics import calibrated_nll, combine_probs, ensemble_metrics, member_metrics, reliability_bins
from ensemblekit.runs.loading import load_run
from ensemblekit.runs.lock import run_lock
from ensemblekit.training.evaluate import collect_member_probs
from ensemblekit.training.logs import RunLogger


def evaluate_ensemble(
    ensemble: Ensemble,
    data: DataBundle,
    split: str,
    batch_size: int,
    fabric=None,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Metrics of ``ensemble`` on ``split``; with a validation split, also the temperature-scaled NLL.

    ``autocast_dtype`` runs the forwards under autocast (the run's precision); softmax and metrics are float32.
    """
    split_data = data.test if split == "test" else data.val
    if split_data is None:
        raise UserError(f"this run has no {split} split (data.val_size is 0)")
    kw = {
        "mean": data.mean,
        "std": data.std,
        "batch_size": batch_size,
        "fabric": fabric,
        "channels_last": channels_last,
        "autocast_dtype": autocast_dtype,
    }
    probs, labels = collect_member_probs(ensemble, split_data, **kw)
    if not bool(torch.isfinite(probs).all()):
        raise UserError(
            f"the ensemble's {split} predictions are not finite (NaN/inf weights or statistics): the training "
            "diverged; try a lower train.lr or train.grad_clip"
        )
    metrics = ensemble_metrics(probs, labels, combine=ensemble.combine)
    result: dict[str, Any] = {
        "split": split,
        "metrics": metrics,
        "members": member_metrics(probs, labels),
        "reliability": reliability_bins(combine_probs(probs, ensemble.combine), labels),
    }
    if data.val is not None and split == "test":
        val_probs, val_labels = collect_member_probs(ensemble, data.val, **kw)
        cal = calibrated_nll(
            combine_probs(val_probs, ensemble.combine),
            val_labels,
            combine_probs(probs, ensemble.combine),
            labels,
        )
        metrics["calibrated_nll"] = cal["nll"]
        metrics["temperature"] = cal["temperature"]
    return result


def evaluate(run_dir: str | Path, split: str = "test", batch_size: int | None = None) -> dict[str, Any]:
    """Re-evaluate a finished run from its ``config.yaml`` and ``model.pt``; write ``eval.json``."""
    with run_lock(run_dir, "evaluate"):
        return _evaluate_locked(load_run(run_dir, batch_size), split)


def _evaluate_locked(run, split: str) -> dict[str, Any]:

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.cfg.train.seed + 1)
        result = evaluate_ensemble(run.ensemble, run.data, split, run.batch_size, None, run.channels_last)
    record = {"run": str(run.run_dir), "method": run.cfg.method.name, "num_members": run.ensemble.num_members}
    record.update(result)
    write_json(run.run_dir / "eval.json", record)
    RunLogger(run.run_dir).event("evaluate", split=split, device=str(run.device), metrics=result["metrics"])
    return record


def interpolate(run_dir: str | Path, a: int = 0, b: int = 1, points: int = 11, split: str = "test") -> dict[str, Any]:
    """Accuracy/NLL along the line between two members' parameters (BN in train mode); writes interpolation.json.

    See ``ensemblekit.analysis.interpolation.interpolate_members`` (MixtureEnsembles paper, section 5.3).
    """
    with run_lock(run_dir, "interpolate"):
        return _interpolate_locked(run_dir, a, b, points, split)


def _interpolate_locked(run_dir: str | Path, a: int, b: int, points: int, split: str) -> dict[str, Any]:

    run = load_run(run_dir)
    split_data = run.data.test if split == "test" else run.data.val
    if split_data is None:
        raise UserError(f"this run has no {split} split (data.val_size is 0)")
    curve = interpolate_members(
        run.ensemble, a, b, split_data, run.data.mean, run.data.std, points, batch_size=run.batch_size
    )
    record = {"run": str(run.run_dir), "method": run.cfg.method.name, "members": [a, b], "split": split, "curve": curve}
    write_json(run.run_dir / "interpolation.json", record)
    return record
