"""One schema for the sparse costs of masked ensembles (``fission``, ``subnetwork``) in ``metrics.json`` ``costs``.

The dense counts (``params``, ``inference_flops``, ``train_epoch_equivalents``) are what ordinary kernels do: a
masked weight is exactly zero but is still multiplied. A kernel that skipped zero weights would do less; the
``*_sparse`` / ``*_nonzero`` keys count that, the "theoretical FLOPs" of pruning papers (NFE's "FLOPs close to a
single model", Lee & Lee 2024; Whitaker, "Neural Subnetwork Ensembles", 2023, counts a 50 %-sparse child epoch as half):

    inference_flops_sparse           = inference_flops − Σ_nets Σ_l (F_l − F_l^nz)
    inference_flops_sparse_vs_single = inference_flops_sparse / single_inference_flops
    params_nonzero                   = params − Σ_nets (weight entries a mask sets to zero)
    train_epoch_equivalents_sparse   = Σ_stages e_s · f_s

over the member networks ``nets`` (those whose FLOPs ``inference_flops`` counts), with F_l = 2·|W_l|·positions and
F_l^nz = 2·nnz(W_l)·positions the dense and non-zero FLOPs per image of conv/linear layer l
(:func:`ensemblekit.pruning.sparse_flops.layer_flops`), e_s a stage's epoch equivalents and f_s ∈ [0, 1] the
fraction of its dense FLOPs that a zero-skipping kernel would still compute (1 for a dense stage). Both methods write
exactly these keys; runs written before this schema used ``sparse_inference_flops``,
``sparse_inference_flops_vs_single`` and ``unpruned_params`` (``fission``), which :data:`LEGACY_KEYS` maps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from ensemblekit.pruning.masks import get_masks
from ensemblekit.pruning.sparse_flops import layer_flops

SPARSE_MODEL_KEYS = ("inference_flops_sparse", "inference_flops_sparse_vs_single", "params_nonzero")
"""Keys of :func:`sparse_model_costs` (also shown by ``describe``)."""

SPARSE_TRAIN_KEY = "train_epoch_equivalents_sparse"

LEGACY_KEYS = {
    "inference_flops_sparse": "sparse_inference_flops",
    "inference_flops_sparse_vs_single": "sparse_inference_flops_vs_single",
    "params_nonzero": "unpruned_params",
}
"""New key -> the key older ``fission`` runs wrote for the same quantity (read as a fallback by ``compare``)."""


def skipped_flops(net: nn.Module, input_shape: Sequence[int] = (1, 3, 32, 32)) -> float:
    """Σ_l (F_l − F_l^nz): forward FLOPs per image of ``net`` that multiply a zero weight."""
    return sum(v["dense"] - v["sparse"] for v in layer_flops(net, input_shape).values())


def masked_out(net: nn.Module) -> int:
    """Weight entries of ``net`` that its masks set to zero."""
    return sum(int((m == 0).sum()) for m in get_masks(net).values())


def sparse_model_costs(nets: Iterable[nn.Module], costs: Mapping[str, Any], input_shape: Sequence[int]) -> dict:
    """The inference and parameter keys of the schema (module docstring) from the dense ``costs``.

    Args:
        nets: The member networks (one network holding every member, as NFE's, is fine).
        costs: Dense costs with ``inference_flops``, ``single_inference_flops`` and ``params`` (as
            :func:`ensemblekit.runs.costs.describe_costs` returns them).
        input_shape: Input shape with batch 1.

    Returns:
        ``inference_flops_sparse`` (per image, rounded to an int as ``inference_flops``),
        ``inference_flops_sparse_vs_single`` and ``params_nonzero``.
    """
    nets = list(nets)
    sparse = round(costs["inference_flops"] - sum(skipped_flops(net, input_shape) for net in nets))
    return {
        "inference_flops_sparse": sparse,
        "inference_flops_sparse_vs_single": sparse / costs["single_inference_flops"],
        "params_nonzero": int(costs["params"]) - sum(masked_out(net) for net in nets),
    }


def sparse_epoch_equivalents(stages: Mapping[str, Mapping[str, Any]], fractions: Mapping[str, float]) -> float:
    """Σ_s e_s · f_s over the recorded ``stages`` (``fractions`` missing a stage: f_s = 1, a dense stage)."""
    return sum(float(s["train_epoch_equivalents"]) * fractions.get(name, 1.0) for name, s in stages.items())
