"""Evaluation metrics and cost accounting for ensembles.

Metrics take member probabilities ``[M, N, C]`` and labels ``[N]`` and return plain floats
(:func:`ensemble_metrics`, :func:`member_metrics`); costs are parameters (:func:`count_parameters`),
inference FLOPs (:func:`inference_flops`) and training cost in single-model epoch equivalents
(:class:`TrainCostMeter`).
"""

from ensemblekit.metrics.calibration import (
    apply_temperature,
    calibrated_nll,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from ensemblekit.metrics.classification import (
    accuracy,
    brier_score,
    combine_probs,
    negative_log_likelihood,
    predictive_entropy,
)
from ensemblekit.metrics.costs import count_parameters
from ensemblekit.metrics.diversity import (
    disagreement,
    mutual_information,
    normalized_disagreement,
    output_correlation,
    pairwise_kl,
)
from ensemblekit.metrics.flops import flops_ratio, inference_flops
from ensemblekit.metrics.summary import (
    ENSEMBLE_METRIC_KEYS,
    MEMBER_METRIC_KEYS,
    ensemble_metrics,
    member_metrics,
)
from ensemblekit.metrics.train_cost import TrainCostMeter

__all__ = [
    "ENSEMBLE_METRIC_KEYS",
    "MEMBER_METRIC_KEYS",
    "TrainCostMeter",
    "accuracy",
    "apply_temperature",
    "brier_score",
    "calibrated_nll",
    "combine_probs",
    "count_parameters",
    "disagreement",
    "ensemble_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "flops_ratio",
    "inference_flops",
    "member_metrics",
    "mutual_information",
    "negative_log_likelihood",
    "normalized_disagreement",
    "output_correlation",
    "pairwise_kl",
    "predictive_entropy",
    "reliability_bins",
]
