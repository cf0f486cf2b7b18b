"""Out-of-distribution detection: AUROC, AUPR and FPR at 95% TPR (exact, tie-aware) and uncertainty scores.

Conventions (as in Hendrycks & Gimpel, 2017, and the uncertainty-baselines OOD tables):

* A *score* is an in-distribution confidence: higher means "more in-distribution". The three scores are
  the maximum combined probability ``max_c p̄_c`` (``max_prob``), the negative predictive entropy
  ``-H(p̄)`` (``entropy``) and the negative mutual information ``-(H(p_mix) - (1/M) Σ_i H(p_i))``
  (``mutual_information``; BALD, with the probability mixture ``p_mix``, zero for one member).
  ``p̄`` is the ensemble's prediction under its combine rule.
* ``auroc``: P(s_in > s_out) + ½ P(s_in = s_out) (the Mann–Whitney statistic; equals the trapezoidal area
  under the ROC curve over the distinct thresholds). It does not depend on which side is "positive".
* ``aupr_in``: average precision with the in-distribution samples as positives and ``s`` as the score;
  ``aupr_out``: with the OOD samples as positives and ``-s`` as the score. Average precision is
  ``Σ_k (R_k − R_{k−1}) P_k`` over the distinct thresholds (tied scores enter together), the step-wise
  area that scikit-learn's and torchmetrics' average precision compute.
* ``fpr95``: the fraction of OOD samples accepted (``s >= t``) at the highest threshold ``t`` that accepts
  at least 95% of the in-distribution samples (in-distribution positive; thresholds are the distinct
  scores, so tied samples are accepted together).
"""

from __future__ import annotations

import torch

from ensemblekit.metrics._validation import as_probabilities
from ensemblekit.metrics.classification import combine_probs, entropy_per_sample

OOD_SCORES: tuple[str, ...] = ("max_prob", "entropy", "mutual_information")
OOD_METRICS: tuple[str, ...] = ("auroc", "aupr_in", "aupr_out", "fpr95")


def _check(scores: torch.Tensor, name: str) -> torch.Tensor:
    s = torch.as_tensor(scores).double().flatten()
    if s.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"{name} must be finite")
    return s


def _counts_by_threshold(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative positives and negatives with score ``>= t`` for the distinct thresholds ``t``, high to low."""
    values, inverse = torch.unique(torch.cat([pos, neg]), return_inverse=True)  # ascending
    n_pos = torch.bincount(inverse[: pos.numel()], minlength=values.numel()).double()
    n_neg = torch.bincount(inverse[pos.numel() :], minlength=values.numel()).double()
    return n_pos.flip(0).cumsum(0), n_neg.flip(0).cumsum(0)


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """P(s_in > s_out) + ½ P(s_in = s_out), from average ranks (exact with ties)."""
    pos, neg = _check(in_scores, "in_scores"), _check(out_scores, "out_scores")
    _, inverse, counts = torch.unique(torch.cat([pos, neg]), return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2  # 1-based average rank of each distinct value
    rank_sum = mean_rank[inverse[: pos.numel()]].sum()
    n_p, n_n = pos.numel(), neg.numel()
    return float((rank_sum - n_p * (n_p + 1) / 2) / (n_p * n_n))


def average_precision(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> float:
    """``Σ_k (R_k − R_{k−1}) P_k`` over the distinct thresholds, high to low (positives score high)."""
    pos, neg = _check(pos_scores, "pos_scores"), _check(neg_scores, "neg_scores")
    tp, fp = _counts_by_threshold(pos, neg)
    precision = tp / (tp + fp)
    recall_step = torch.diff(tp, prepend=tp.new_zeros(1)) / pos.numel()
    return float((recall_step * precision).sum())


def fpr_at_tpr(in_scores: torch.Tensor, out_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """OOD acceptance rate at the highest threshold accepting at least ``tpr`` of the in-distribution samples."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    pos, neg = _check(in_scores, "in_scores"), _check(out_scores, "out_scores")
    tp, fp = _counts_by_threshold(pos, neg)
    first = int(torch.nonzero(tp >= tpr * pos.numel() - 1e-9)[0])
    return float(fp[first] / neg.numel())


def ood_detection_metrics(in_scores: torch.Tensor, out_scores: torch.Tensor) -> dict[str, float]:
    """``auroc``, ``aupr_in``, ``aupr_out`` and ``fpr95`` for in-distribution confidence scores (see module)."""
    in_s, out_s = _check(in_scores, "in_scores"), _check(out_scores, "out_scores")
    return {
        "auroc": auroc(in_s, out_s),
        "aupr_in": average_precision(in_s, out_s),
        "aupr_out": average_precision(-out_s, -in_s),
        "fpr95": fpr_at_tpr(in_s, out_s, 0.95),
    }


def ood_scores(member_probs: torch.Tensor, combine: str = "probs") -> dict[str, torch.Tensor]:
    """In-distribution confidence scores ``[N]`` from member probabilities ``[M, N, C]`` (see module docstring)."""
    probs = as_probabilities(member_probs, "member_probs", dims=3).double()
    combined = combine_probs(probs, combine)
    mixture = probs.mean(dim=0)
    member_entropy = entropy_per_sample(probs)  # [M, N]
    mutual_info = entropy_per_sample(mixture) - member_entropy.mean(dim=0)
    return {
        "max_prob": combined.max(dim=-1).values,
        "entropy": -entropy_per_sample(combined),
        "mutual_information": -mutual_info,
    }


def ood_evaluation(
    in_member_probs: torch.Tensor, out_member_probs: torch.Tensor, combine: str = "probs"
) -> dict[str, dict[str, float]]:
    """:func:`ood_detection_metrics` for every score of :func:`ood_scores`: ``{score: {metric: value}}``."""
    s_in, s_out = ood_scores(in_member_probs, combine), ood_scores(out_member_probs, combine)
    return {name: ood_detection_metrics(s_in[name], s_out[name]) for name in OOD_SCORES}
