"""Dense and sparse FLOPs of masked children (Whitaker's survey counts a 50 %-sparse child epoch as half).

A dense kernel computes every product whatever the mask, so the engine's cost meter (``FlopCounterMode``)
charges sparse children at dense cost; that is the wall-clock truth on ordinary hardware (methods.md 2(d).5).
The *sparse* count assumes a kernel that skips zero weights: for each Conv2d/Linear layer l with dense forward
FLOPs F_l and weight density d_l,

    F_sparse = F_dense − Σ_l (1 − d_l)·F_l,        F_l = 2 · (output elements per image) · (fan-in of one output)

(2 FLOPs per multiply-add, as ``FlopCounterMode``; biases, BN and activations unchanged).
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def layer_flops(module: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> dict[str, float]:
    """Dense forward FLOPs per image of every Conv2d and Linear layer, by qualified name."""
    flops: dict[str, float] = {}
    handles = []
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):

            def hook(mod, inputs, output, name=name):
                w = mod.weight
                fan_in = w[0].numel()
                flops[name] = 2.0 * output[0].numel() * fan_in

            handles.append(layer.register_forward_hook(hook))
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    try:
        module(torch.zeros(input_shape, device=device))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return flops


def weight_densities(module: nn.Module) -> dict[str, float]:
    """Fraction of non-zero effective weights of every Conv2d and Linear layer."""
    out = {}
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            w = layer.weight.detach()
            out[name] = float((w != 0).sum()) / max(1, w.numel())
    return out


def saved_flops(
    module: nn.Module, densities: dict[str, float] | None = None, input_shape: tuple[int, ...] = (1, 3, 32, 32)
) -> float:
    """Σ_l (1 − d_l)·F_l: the forward FLOPs per image a zero-skipping kernel would not compute.

    Args:
        module: The network.
        densities: Per-layer densities d_l (default: measured from the effective weights).
        input_shape: Input shape with batch 1.
    """
    per_layer = layer_flops(module, input_shape)
    dens = weight_densities(module) if densities is None else densities
    return sum((1.0 - dens.get(name, 1.0)) * f for name, f in per_layer.items())
