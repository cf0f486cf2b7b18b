"""Pruning: masks enforced in the forward pass, and the scores and thresholds that make them."""

from ensemblekit.pruning.masks import (
    WeightMask,
    add_masks,
    classifier_names,
    count_nonzero,
    density_report,
    get_masks,
    has_mask,
    mask_of,
    masked_layers,
    masks_from_scores,
    prunable_layers,
    prunable_weights,
    set_masks,
)

__all__ = [
    "WeightMask",
    "add_masks",
    "classifier_names",
    "count_nonzero",
    "density_report",
    "get_masks",
    "has_mask",
    "mask_of",
    "masked_layers",
    "masks_from_scores",
    "prunable_layers",
    "prunable_weights",
    "set_masks",
]
