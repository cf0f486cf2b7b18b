"""Diversity of an ensemble's members.

Disagreement, Fort et al.'s normalised disagreement, pairwise KL, output correlation and the mutual
information (the epistemic part of the uncertainty).

Pairwise quantities are computed for all ordered member pairs at once as ``[M, M]`` matrices; the
reported number is the mean over the off-diagonal entries (pairs a ≠ b). With a single member there is
no pair and every pairwise quantity is NaN.

* Disagreement (prediction disagreement ratio; Whitaker's survey, d_PDR):
  d(a, b) = (1/N) Σ_n 1[argmax p_a(x_n) ≠ argmax p_b(x_n)].
* Normalised disagreement (Fort, Hu & Lakshminarayanan, 2019, "Deep Ensembles: A Loss Landscape
  Perspective"): D(a, b) = d(a, b) / (1 − Acc(a)), normalised by the error of the *reference* member a,
  averaged over ordered pairs. A member with zero error gives an infinite (or, with d = 0, NaN) term.
* Pairwise KL (Whitaker's survey, d_KL): KL(a ‖ b) = (1/N) Σ_n Σ_c p_a,c log(p_a,c / p_b,c), logs clamped
  at 1e-12, averaged over ordered pairs (KL is not symmetric).
* Output correlation (Whitaker's survey, d_corr): the Pearson correlation between the probability
  vectors p_a(x_n) and p_b(x_n) over the C classes, averaged over samples and pairs. Samples where one
  of the two vectors is constant (zero variance, e.g. uniform) have no correlation and are skipped.
* Mutual information (BALD; Houlsby et al., 2011; Depeweg et al., 2018):
  I = (1/N) Σ_n [H(p̄_n) − (1/M) Σ_i H(p_i,n)] with the *probability* mixture p̄ = (1/M) Σ_i p_i,
  whatever the ensemble's combine rule: this is the mutual information between the label and the
  member index, ≥ 0 by Jensen's inequality, and equal to 0 for a single member.
"""

from __future__ import annotations

import torch

from ensemblekit.metrics._validation import as_labels, as_probabilities
from ensemblekit.metrics.classification import LOG_EPS, entropy_per_sample

CONSTANT_VARIANCE = 1e-20
"""A probability vector whose squared deviations from its mean sum to at most this is taken as constant."""


def mean_off_diagonal(matrix: torch.Tensor) -> float:
    """Mean of the entries (a, b), a ≠ b, of a square ``[M, M]`` matrix; NaN when M = 1."""
    m = matrix.shape[0]
    if m < 2:
        return float("nan")
    mask = ~torch.eye(m, dtype=torch.bool, device=matrix.device)
    return matrix[mask].mean().item()


def disagreement_matrix(predictions: torch.Tensor) -> torch.Tensor:
    """d(a, b) = fraction of samples whose top-1 classes differ, from predictions ``[M, N]`` -> ``[M, M]``."""
    return (predictions.unsqueeze(1) != predictions.unsqueeze(0)).double().mean(dim=-1)


def normalized_disagreement_matrix(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fort et al. (2019): D(a, b) = d(a, b) / (1 − Acc(a)) from predictions ``[M, N]`` -> ``[M, M]``."""
    error = (predictions != labels).double().mean(dim=-1)
    return disagreement_matrix(predictions) / error.unsqueeze(1)


def kl_matrix(probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """KL(a ‖ b) averaged over samples for members ``[M, N, C]`` -> ``[M, M]``.

    Uses KL(a ‖ b) = X(a, a) − X(a, b) with X(a, b) = (1/N) Σ_n Σ_c p_a log p_b, one ``[M, M]`` matrix
    product over the flattened (n, c) axis; ``log_probs`` are the 1e-12-clamped logs.
    """
    cross = probs.flatten(1) @ log_probs.flatten(1).T / probs.shape[1]
    return (cross.diagonal().unsqueeze(1) - cross).clamp_min(0.0)


def correlation_matrix(probs: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the Pearson correlation of p_a(x_n) and p_b(x_n), ``[M, N, C]`` -> ``[M, M]``.

    With G_ab,n = Σ_c (p_a,n,c − mean_c p_a,n)(p_b,n,c − mean_c p_b,n), the correlation is
    G_ab,n / sqrt(G_aa,n G_bb,n). Samples where either vector is constant (G_aa,n ≤ CONSTANT_VARIANCE) are
    left out of the mean (NaN if none is left).
    """
    centred = probs - probs.mean(dim=-1, keepdim=True)
    gram = torch.einsum("anc,bnc->abn", centred, centred)  # [M, M, N]
    variance = gram.diagonal(dim1=0, dim2=1).T  # [M, N]
    variance = variance.masked_fill(variance <= CONSTANT_VARIANCE, float("nan"))
    scale = variance.sqrt()
    return (gram / (scale.unsqueeze(1) * scale.unsqueeze(0))).nanmean(dim=-1)


def mutual_information_per_sample(
    member_entropy: torch.Tensor, mixture: torch.Tensor, mixture_log: torch.Tensor | None = None
) -> torch.Tensor:
    """H(p̄_n) − (1/M) Σ_i H(p_i,n) per sample ``[N]`` from member entropies ``[M, N]`` and p̄ ``[N, C]``."""
    return entropy_per_sample(mixture, mixture_log) - member_entropy.mean(dim=0)


def _members(member_probs: torch.Tensor) -> torch.Tensor:
    return as_probabilities(member_probs, "member_probs", dims=3).double()


def disagreement(member_probs: torch.Tensor) -> float:
    """Mean pairwise top-1 disagreement of members ``[M, N, C]`` (NaN for M = 1); see the module docstring."""
    return mean_off_diagonal(disagreement_matrix(_members(member_probs).argmax(dim=-1)))


def normalized_disagreement(member_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fort et al. (2019) diversity, mean of d(a, b)/(1 − Acc(a)) over ordered pairs (NaN for M = 1)."""
    p = _members(member_probs)
    y = as_labels(labels, p.shape[1], p.shape[2], p.device)
    return mean_off_diagonal(normalized_disagreement_matrix(p.argmax(dim=-1), y))


def pairwise_kl(member_probs: torch.Tensor) -> float:
    """Mean over ordered pairs of (1/N) Σ_n KL(p_a(x_n) ‖ p_b(x_n)) in nats (NaN for M = 1)."""
    p = _members(member_probs)
    return mean_off_diagonal(kl_matrix(p, p.clamp_min(LOG_EPS).log()))


def output_correlation(member_probs: torch.Tensor) -> float:
    """Mean over pairs and samples of the Pearson correlation of member probability vectors (NaN if M = 1)."""
    return mean_off_diagonal(correlation_matrix(_members(member_probs)))


def mutual_information(member_probs: torch.Tensor) -> float:
    """Mean mutual information (1/N) Σ_n [H(p̄_n) − (1/M) Σ_i H(p_i,n)] in nats, p̄ the probability mean."""
    p = _members(member_probs)
    if p.shape[0] == 1:
        return 0.0
    return max(mutual_information_per_sample(entropy_per_sample(p), p.mean(dim=0)).mean().item(), 0.0)
