"""Dense and sparse inference FLOPs of a (masked) network, counted per conv / linear layer.

Dense FLOPs follow :mod:`ensemblekit.metrics.flops` (2 FLOPs per multiply-add of every conv and linear; bias,
BN, activations and pooling not counted): a conv with weight W (``out × in/groups × k × k``) producing an
``H' × W'`` map costs 2 · |W| · H' · W' per image, a linear 2 · |W|. Sparse FLOPs count only the non-zero
entries of the *effective* weight: 2 · nnz(W) · H' · W' — the "theoretical FLOPs" of sparse execution that
pruning papers (and NFE's "FLOPs close to a single model") report. Dense kernels do the dense count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def layer_flops(module: nn.Module, input_shape: Sequence[int] = (1, 3, 32, 32)) -> dict[str, dict[str, float]]:
    """Per conv/linear layer of ``module``: ``dense`` and ``sparse`` FLOPs per image of one eval forward pass.

    A layer run several times in one forward is counted every time. The module's train/eval flags are restored.
    """
    shape = tuple(int(s) for s in input_shape)
    counts: dict[str, dict[str, float]] = {}
    handles = []

    def hook(name: str):
        def _count(layer: nn.Module, inputs, output: torch.Tensor) -> None:
            w = layer.weight.detach()
            if isinstance(layer, nn.Conv2d):
                positions = output.shape[-2] * output.shape[-1]
            else:
                positions = output.numel() // (output.shape[-1] * output.shape[0])
            entry = counts.setdefault(name, {"dense": 0.0, "sparse": 0.0})
            entry["dense"] += 2.0 * w.numel() * positions
            entry["sparse"] += 2.0 * int((w != 0).sum()) * positions

        return _count

    for name, layer in module.named_modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            handles.append(layer.register_forward_hook(hook(name)))
    modes = [(m, m.training) for m in module.modules()]
    tensors = [*module.parameters(), *module.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(shape, device=device))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return counts


def sparse_inference_flops(module: nn.Module, input_shape: Sequence[int] = (1, 3, 32, 32)) -> dict[str, float]:
    """Totals per image: ``{"dense": ..., "sparse": ...}`` over every conv and linear layer (see module docstring)."""
    per_layer = layer_flops(module, input_shape)
    return {
        "dense": sum(v["dense"] for v in per_layer.values()),
        "sparse": sum(v["sparse"] for v in per_layer.values()),
    }
