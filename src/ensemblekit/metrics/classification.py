"""Classification quality of a probability prediction: combination rules, accuracy, NLL, Brier, entropy.

Sums and means run in ``float64``; logarithms are taken in float32 for float32/float16/bfloat16 input
(≈1e-7 relative error, six times faster than float64 on CPU) and in float64 for float64 input. The public
functions return plain Python floats; the ``*_per_sample`` helpers return tensors for
:mod:`ensemblekit.metrics.summary`.

Definitions (N samples, C classes, p_n the predicted distribution, y_n the label):

* accuracy = (1/N) Σ_n 1[argmax_c p_{n,c} = y_n]
* NLL = −(1/N) Σ_n log max(p_{n,y_n}, 1e-12)
* Brier = (1/N) Σ_n Σ_c (p_{n,c} − 1[c = y_n])²  (Brier, 1950; summed over classes, *not* divided by C)
* entropy H(p_n) = −Σ_c p_{n,c} log max(p_{n,c}, 1e-12)
"""

from __future__ import annotations

import math

import torch

from ensemblekit.metrics._validation import as_labels, as_probabilities, check_combine
from ensemblekit.metrics.combine import Combine

LOG_EPS = 1e-12
"""Probabilities are clamped to at least this value before taking the log in NLL, KL and entropy."""

LOG_EPS_LOG = math.log(LOG_EPS)


def log_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """The dtype logarithms are taken in: float64 for float64 input, float32 otherwise."""
    return torch.float64 if input_dtype == torch.float64 else torch.float32


def tiny_log(probs: torch.Tensor, input_dtype: torch.dtype) -> torch.Tensor:
    """``float64`` log-probabilities clamped at the smallest normal number of :func:`log_dtype`.

    The floor is ≈ −87.3 for float32 (≈ −708 for float64). Where no probability underflowed to 0 this
    is the log-softmax ``z − logsumexp(z)`` of the logits that produced ``probs``.
    """
    work = log_dtype(input_dtype)
    return probs.to(work).clamp_min(torch.finfo(work).tiny).log().to(torch.float64)


def clamped_log(probs: torch.Tensor, input_dtype: torch.dtype) -> torch.Tensor:
    """``float64`` log max(p, 1e-12), taken in :func:`log_dtype` (the log used by NLL, KL and entropy)."""
    return probs.to(log_dtype(input_dtype)).clamp_min(LOG_EPS).log().to(torch.float64)


def combine_from_log(probs: torch.Tensor, log_probs: torch.Tensor, combine: Combine) -> torch.Tensor:
    """Combine members ``[M, N, C]`` given their tiny-clamped logs; see :func:`combine_probs`."""
    if combine == "probs":
        return probs.mean(dim=0)
    return log_probs.mean(dim=0).softmax(dim=-1)


def combine_probs(member_probs: torch.Tensor, combine: Combine = "probs") -> torch.Tensor:
    """Combine per-member probabilities ``[M, N, C]`` into the ensemble prediction ``[N, C]``.

    * ``"probs"``: p̄ = (1/M) Σ_i p_i (deep ensembles; Lakshminarayanan et al., 2017).
    * ``"logits"``: p̃ = softmax((1/M) Σ_i z_i) (Network Fission Ensembles; Lee & Lee, 2024). Because
      log p_i = z_i − logsumexp(z_i) and softmax ignores a per-sample constant,
      softmax((1/M) Σ_i log p_i) = softmax((1/M) Σ_i z_i) exactly, so it is computed from the
      probabilities; log p is clamped at the smallest normal float32 (float64 for float64 input), which
      matters only where a member probability underflowed to 0.

    Args:
        member_probs: Member class probabilities ``[M, N, C]``.
        combine: ``"probs"`` or ``"logits"``.

    Returns:
        Combined probabilities ``[N, C]`` as ``float64``.

    Raises:
        ValueError: On a wrong shape, non-probability rows, or an unknown rule.
    """
    check_combine(combine)
    member_probs = as_probabilities(member_probs, "member_probs", dims=3)
    p = member_probs.double()
    if combine == "probs":
        return p.mean(dim=0)
    return tiny_log(p, member_probs.dtype).mean(dim=0).softmax(dim=-1)


def correct_per_sample(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``1[argmax p = y]`` as a bool tensor ``[..., N]`` for probabilities ``[..., N, C]``."""
    return probs.argmax(dim=-1) == labels


def nll_per_sample(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``−log max(p_y, 1e-12)`` per sample ``[..., N]`` for probabilities ``[..., N, C]``."""
    index = labels.expand(probs.shape[:-1]).unsqueeze(-1)
    return -probs.gather(-1, index).squeeze(-1).clamp_min(LOG_EPS).log()


def brier_per_sample(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_c (p_c − 1[c = y])² per sample ``[..., N]``, computed as Σ_c p_c² − 2 p_y + 1."""
    index = labels.expand(probs.shape[:-1]).unsqueeze(-1)
    p_true = probs.gather(-1, index).squeeze(-1)
    return (probs.square().sum(dim=-1) - 2.0 * p_true + 1.0).clamp_min(0.0)


def entropy_per_sample(probs: torch.Tensor, log_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Shannon entropy in nats, −Σ_c p_c log max(p_c, 1e-12), per sample ``[..., N]``.

    ``log_probs`` may pass the already computed log max(p, 1e-12).
    """
    if log_probs is None:
        log_probs = probs.clamp_min(LOG_EPS).log()
    return -(probs * log_probs).sum(dim=-1)


def _prepare(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = as_probabilities(probs, "probs", dims=2).double()
    return p, as_labels(labels, p.shape[0], p.shape[1], p.device)


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (1/N) Σ_n 1[argmax_c p_{n,c} = y_n] of probabilities ``[N, C]``."""
    p, y = _prepare(probs, labels)
    return correct_per_sample(p, y).double().mean().item()


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood −(1/N) Σ_n log max(p_{n,y_n}, 1e-12) of probabilities ``[N, C]``."""
    p, y = _prepare(probs, labels)
    return nll_per_sample(p, y).mean().item()


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Brier score (1/N) Σ_n Σ_c (p_{n,c} − 1[c = y_n])² (Brier, 1950), summed over classes, in [0, 2]."""
    p, y = _prepare(probs, labels)
    return brier_per_sample(p, y).mean().item()


def predictive_entropy(probs: torch.Tensor) -> float:
    """Mean Shannon entropy (nats) of probabilities ``[N, C]``: (1/N) Σ_n H(p_n)."""
    p = as_probabilities(probs, "probs", dims=2).double()
    return entropy_per_sample(p).mean().item()
