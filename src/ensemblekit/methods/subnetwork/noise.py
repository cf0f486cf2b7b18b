"""Noisy children (Sparse Mutation Decompositions, Whitaker, arXiv 2302.05832, 2023) and BN statistics refresh.

Mutation of the parent θ_P into child i, tensor by tensor (layer l, n_l entries):

    θ_i,l = θ_P,l + m_i,l ⊙ ε_i,l,    ε_i,l ~ N(0, σ_l² I),    σ_l = σ_rel · std(θ_P,l)

with m_i,l a {0,1} mask of exactly round(ρ·n_l) mutated entries (ρ = ``noise_density``; ρ = 1 is dense ES
mutation, ρ = 0 leaves the parent unchanged). σ is relative to each tensor's own spread because weight scales
differ by orders of magnitude between layers. With ``decomposition`` the masks of a group of
k children are a partition of the index set (child j mutates only chunk j; ρ = 1/k), the static subspace
decomposition of SMD.

BN refresh (optional; the papers do not say whether they refresh; docs/methods/subnetwork.md): reset the running
statistics of every BatchNorm layer and re-estimate them as the cumulative average over ``batches`` training batches in
train mode, without gradients.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

NoiseScope = Literal["weights", "all"]


def noise_targets(module: nn.Module, scope: NoiseScope) -> dict[str, torch.Tensor]:
    """The tensors a mutation perturbs, by parameter name.

    ``weights``: the weight of every Conv2d and Linear layer (the classifier included; the raw ``original``
    tensor of a masked layer). ``all``: every parameter (BN affine parameters and biases too).
    """
    params = dict(module.named_parameters())
    if scope == "all":
        return params
    if scope != "weights":
        raise ValueError(f"unknown noise scope {scope!r}; valid: weights, all")
    out = {}
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            key = (
                f"{name}.parametrizations.weight.original"
                if f"{name}.parametrizations.weight.original" in params
                else f"{name}.weight"
            )
            out[key] = params[key]
    return out


@torch.no_grad()
def mutate(
    tensors: dict[str, torch.Tensor],
    sigma_rel: float,
    supports: dict[str, torch.Tensor],
    generator: torch.Generator,
) -> None:
    """Add θ ← θ + m ⊙ ε, ε ~ N(0, (σ_rel·std θ)²), in place; ``supports`` are the masks m (same names)."""
    for name in sorted(tensors):
        t = tensors[name]
        m = supports[name]
        if t.numel() < 2 or not bool(m.any()):
            continue
        std = float(t.detach().float().std())
        eps = torch.randn(t.shape, generator=generator) * (sigma_rel * std)
        t.add_((eps * m).to(t))


@torch.no_grad()
def refresh_bn(module: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Re-estimate BN running statistics as the cumulative mean over ``batches``; returns the images used."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    was_training = module.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    module.train()
    images = 0
    try:
        for x, _ in batches:
            module(x)
            images += len(x)
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        module.train(was_training)
    return images
