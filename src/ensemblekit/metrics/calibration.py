"""Calibration: expected calibration error and temperature scaling (calibrated NLL).

* ECE (Naeini et al., 2015; Guo et al., 2017) with equal-width confidence bins over (0, 1].
* Temperature scaling (Guo et al., 2017): one scalar T fitted on a validation split, then applied to
  the test predictions. The NLL after it is the "calibrated log-likelihood" that Ashukha et al. (2020,
  "Pitfalls of in-domain uncertainty estimation and ensembling in deep learning") recommend for
  comparing ensembles, because raw NLL mixes ranking quality with over/under-confidence.
"""

from __future__ import annotations

import math

import torch

from ensemblekit.metrics._validation import as_labels, as_probabilities
from ensemblekit.metrics.classification import LOG_EPS, nll_per_sample

T_MIN = 0.01
"""Smallest temperature :func:`fit_temperature` returns (T is searched in [T_MIN, T_MAX])."""
T_MAX = 100.0
"""Largest temperature :func:`fit_temperature` returns."""


def binned_ece(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """ECE from top-1 confidences and correctness ``[..., N]``, batched over leading axes.

    Uses Σ_b (n_b/N)·|acc(b) − conf(b)| = (1/N) Σ_b |Σ_{n∈b} (1[correct_n] − conf_n)|.

    Returns:
        A ``float64`` tensor of shape ``[...]``.
    """
    boundaries = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=confidence.device)
    conf = confidence.double()
    # bucketize(right=False) gives i with b[i-1] < x <= b[i]: bins (k/B, (k+1)/B], so conf = 1 is in the last.
    bins = (torch.bucketize(conf, boundaries, right=False) - 1).clamp_(0, n_bins - 1)
    lead = conf.shape[:-1]
    flat_bins = bins.reshape(-1, conf.shape[-1])
    offsets = torch.arange(flat_bins.shape[0], device=conf.device).unsqueeze(1) * n_bins
    gaps = torch.zeros(flat_bins.shape[0] * n_bins, dtype=torch.float64, device=conf.device)
    gaps.scatter_add_(0, (flat_bins + offsets).reshape(-1), (correct.double() - conf).reshape(-1))
    return gaps.view(-1, n_bins).abs().sum(dim=1).div(conf.shape[-1]).reshape(lead)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (L1) of probabilities ``[N, C]``.

    ECE = Σ_b (n_b/N)·|acc(b) − conf(b)| over ``n_bins`` equal-width bins B_b = ((b−1)/n_bins, b/n_bins]
    of the confidence conf_n = max_c p_{n,c}; acc(b) is the top-1 accuracy of the samples in bin b
    (Naeini et al., 2015; Guo et al., 2017 — the 15-bin version used by the NFE, Prune-and-Tune and
    uncertainty-baselines code). Empty bins contribute 0. Equals torchmetrics'
    ``MulticlassCalibrationError(n_bins=15, norm="l1")`` except for a confidence lying exactly on a bin
    edge: torchmetrics bins [lo, hi) and gives conf = 1.0 a bin of its own, here bins are (lo, hi].

    Args:
        probs: Predicted class probabilities ``[N, C]``.
        labels: Integer labels ``[N]``.
        n_bins: Number of equal-width bins.

    Returns:
        The ECE in [0, 1].

    Raises:
        ValueError: On wrong shapes, non-probability rows, labels out of range or ``n_bins < 1``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p = as_probabilities(probs, "probs", dims=2).double()
    y = as_labels(labels, p.shape[0], p.shape[1], p.device)
    confidence, prediction = p.max(dim=-1)
    return binned_ece(confidence, prediction == y, n_bins).item()


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, list[float]]:
    """The data of a reliability diagram (Guo et al., 2017) over equal-width confidence bins.

    Per bin ((b−1)/n_bins, b/n_bins]: the number of samples, their mean confidence and their top-1 accuracy
    (``None`` for empty bins, so the dict is JSON).

    ECE = Σ_b (count_b / N)·|accuracy_b − confidence_b| over the non-empty bins (the same bins as
    :func:`expected_calibration_error`).

    Returns:
        ``{"edges": n_bins + 1 bin edges, "count": [...], "confidence": [...], "accuracy": [...]}``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p = as_probabilities(probs, "probs", dims=2).double()
    y = as_labels(labels, p.shape[0], p.shape[1], p.device)
    conf, pred = p.max(dim=-1)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=p.device)
    bins = (torch.bucketize(conf, edges, right=False) - 1).clamp_(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64, device=p.device).scatter_add_(0, bins, torch.ones_like(conf))
    conf_sum = torch.zeros_like(count).scatter_add_(0, bins, conf)
    correct_sum = torch.zeros_like(count).scatter_add_(0, bins, (pred == y).double())
    counts = [int(c) for c in count.tolist()]
    mean_conf = (conf_sum / count.clamp(min=1)).tolist()
    mean_acc = (correct_sum / count.clamp(min=1)).tolist()
    return {
        "edges": edges.tolist(),
        "count": counts,
        "confidence": [c if n else None for c, n in zip(mean_conf, counts)],
        "accuracy": [a if n else None for a, n in zip(mean_acc, counts)],
    }


def apply_temperature(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature-scaled probabilities softmax(log max(p, 1e-12) / T) as ``float64`` ``[N, C]``.

    log p equals the logits up to a per-sample constant, which softmax ignores, so this is the usual
    softmax(z / T) of Guo et al. (2017) computed from probabilities.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = as_probabilities(probs, "probs", dims=2).double()
    return (p.clamp_min(LOG_EPS).log() / temperature).softmax(dim=-1)


def _nll_derivatives(scores: torch.Tensor, labels: torch.Tensor, beta: float) -> tuple[float, float]:
    """First and second derivative in β = 1/T of mean_n [logsumexp(β s_n) − β s_{n,y_n}].

    With q = softmax(β s): d/dβ = mean_n (E_q[s_n] − s_{n,y_n}), d²/dβ² = mean_n Var_q[s_n] ≥ 0.
    """
    q = (beta * scores).softmax(dim=-1)
    mean_s = (q * scores).sum(dim=-1)
    var_s = (q * (scores - mean_s.unsqueeze(-1)).square()).sum(dim=-1)
    true_s = scores.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (mean_s - true_s).mean().item(), var_s.mean().item()


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fit the temperature T that minimises the NLL of softmax(log p / T) (Guo et al., 2017).

    With s = log max(p, 1e-12) and β = 1/T, NLL(β) = mean_n [logsumexp(β s_n) − β s_{n,y_n}] is convex in
    β, so its minimiser is the root of the monotone derivative. The root is found by safeguarded Newton
    steps inside a bisection bracket β ∈ [1/T_MAX, 1/T_MIN] — deterministic, no learning rate, and a
    handful of passes over the data. If the minimum lies outside the bracket (e.g. a validation set
    classified perfectly wants T → 0) the nearest end is returned.

    Args:
        probs: Combined validation probabilities ``[N, C]`` (apply the ensemble's combine rule first).
        labels: Validation labels ``[N]``.

    Returns:
        The temperature T in [T_MIN, T_MAX]; T > 1 softens over-confident predictions.

    Raises:
        ValueError: On wrong shapes, non-probability rows or labels out of range.
    """
    p = as_probabilities(probs, "probs", dims=2).double()
    y = as_labels(labels, p.shape[0], p.shape[1], p.device)
    scores = p.clamp_min(LOG_EPS).log()
    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN
    if _nll_derivatives(scores, y, lo)[0] >= 0.0:
        return T_MAX
    if _nll_derivatives(scores, y, hi)[0] <= 0.0:
        return T_MIN
    beta = 1.0
    for _ in range(100):
        grad, curvature = _nll_derivatives(scores, y, beta)
        if grad == 0.0:
            break
        if grad > 0.0:
            hi = beta
        else:
            lo = beta
        candidate = math.nan
        if curvature > 0.0:
            step = grad / curvature
            if abs(step) <= 1e-10 * beta:  # converged: the Newton step is below float precision of T
                beta -= step
                break
            candidate = beta - step
        if not lo < candidate < hi:
            candidate = math.sqrt(lo * hi)  # bisection in log β keeps the relative precision
        beta = candidate
    return 1.0 / beta


def calibrated_nll(
    val_probs: torch.Tensor,
    val_labels: torch.Tensor,
    test_probs: torch.Tensor,
    test_labels: torch.Tensor,
) -> dict[str, float]:
    """Test NLL after temperature scaling fitted on a validation split ("calibrated log-likelihood").

    T* = argmin_T NLL_val(softmax(log p_val / T)) (:func:`fit_temperature`; Guo et al., 2017), then
    cNLL = −(1/N) Σ_n log softmax(log p_test,n / T*)_{y_n}. Ashukha et al. (2020) recommend this as the
    in-domain uncertainty metric for comparing ensembles.

    Args:
        val_probs: Combined validation probabilities ``[N_val, C]``.
        val_labels: Validation labels ``[N_val]``.
        test_probs: Combined test probabilities ``[N_test, C]``.
        test_labels: Test labels ``[N_test]``.

    Returns:
        ``{"nll": cNLL, "temperature": T*}``.

    Raises:
        ValueError: On wrong shapes, mismatched class counts, non-probability rows or labels out of range.
    """
    test = as_probabilities(test_probs, "test_probs", dims=2)
    val = as_probabilities(val_probs, "val_probs", dims=2)
    if val.shape[1] != test.shape[1]:
        raise ValueError(f"val_probs has {val.shape[1]} classes but test_probs has {test.shape[1]}")
    temperature = fit_temperature(val, val_labels)
    y = as_labels(test_labels, test.shape[0], test.shape[1], test.device)
    nll = nll_per_sample(apply_temperature(test, temperature), y).mean().item()
    return {"nll": nll, "temperature": temperature}
