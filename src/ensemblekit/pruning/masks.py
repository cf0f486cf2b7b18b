"""Weight masks, and the thresholds that turn scores into masks.

A mask is a ``{0, 1}`` buffer registered on a layer through ``torch.nn.utils.parametrize``. By default
(``enforce="forward"``) the layer's ``weight`` is computed as ``original * mask`` at every forward, so masked
weights are exactly zero from the moment the mask is set and stay zero through any number of optimiser steps,
weight decay included (their gradient is ``grad * mask = 0``; decay may move the hidden ``original`` value, never
the used weight). Network Fission Ensembles (Lee & Lee, 2024; docs/methods/fission.md) and the
sparse Neural Subnetwork Ensembles (Whitaker, 2023; docs/methods/subnetwork.md) rely on this.

``enforce="gradient"`` reproduces the official NFE code (Lee & Lee, 2024, ``hjdw2/NFE``), which masks only the
gradient (a hook ``grad * mask``; the line meant to zero the pruned weights is unreachable): the forward pass
uses the whole ``original`` weight, masked entries keep their initial values, receive zero gradient and shrink
only through the optimiser's weight decay (plain SGD: w ← w·(1 − lr·wd) per step).

Structure contract: masks are *added* when the method builds its ensemble (all ones, so the state-dict keys
exist from the start and checkpoints resume) and *set* later by a stage hook (``set_masks``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> names = add_masks(net)            # the classifier (last Linear) is left alone
    >>> names
    ['0']
    >>> scores = {n: w.abs() for n, w in prunable_weights(net).items()}
    >>> set_masks(net, masks_from_scores(scores, density=0.5))
    >>> int((net[0].weight == 0).sum())
    8
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


MaskEnforcement = Literal["forward", "gradient"]


class WeightMask(nn.Module):
    """Parametrization of a masked weight, ``mask`` a persistent buffer (all ones at first).

    Args:
        shape: The weight's shape.
        enforce: ``forward``: ``weight = original * mask`` (masked entries are zero and get no gradient);
            ``gradient``: ``weight = original`` in value, with ∂L/∂original = mask ⊙ ∂L/∂weight (masked entries
            are used as they are but get no gradient; the official NFE code's gradient hook).
    """

    def __init__(
        self, shape: torch.Size | tuple[int, ...], device=None, dtype=None, enforce: MaskEnforcement = "forward"
    ) -> None:
        super().__init__()
        if enforce not in ("forward", "gradient"):
            raise ValueError(f"enforce must be 'forward' or 'gradient', got {enforce!r}")
        self.enforce = enforce
        self.register_buffer("mask", torch.ones(shape, device=device, dtype=dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.enforce == "gradient":
            return torch.where(self.mask > 0, weight, weight.detach())
        return weight * self.mask


def classifier_names(module: nn.Module) -> set[str]:
    """Qualified names of the classifier layers: every ``head.fc`` (ensemblekit backbones), else the last Linear."""
    heads = {name for name, m in module.named_modules() if isinstance(m, nn.Linear) and name.endswith("head.fc")}
    if heads:
        return heads
    linears = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    return {linears[-1]} if linears else set()


def prunable_layers(module: nn.Module, include_classifier: bool = False) -> dict[str, nn.Module]:
    """Conv and Linear layers whose weights may be pruned, by qualified name (the classifier is excluded).

    Biases and BatchNorm parameters are never pruned.
    """
    skip = set() if include_classifier else classifier_names(module)
    return {
        name: m
        for name, m in module.named_modules()
        if isinstance(m, PRUNABLE_TYPES) and name not in skip and name != ""
    }


def add_masks(
    module: nn.Module, layers: Iterable[str] | None = None, enforce: MaskEnforcement = "forward"
) -> list[str]:
    """Register an all-ones mask on the weight of each prunable layer (or of ``layers``); return their names.

    ``enforce`` says how the mask acts (:class:`WeightMask`). Idempotent: a layer that already has a mask keeps it.
    """
    table = dict(module.named_modules())
    names = list(prunable_layers(module)) if layers is None else list(layers)
    for name in names:
        layer = table[name]
        if has_mask(layer):
            continue
        w = layer.weight
        mask = WeightMask(w.shape, device=w.device, dtype=w.dtype, enforce=enforce)
        parametrize.register_parametrization(layer, "weight", mask)
    return names


def has_mask(layer: nn.Module) -> bool:
    """Whether ``layer.weight`` carries a ``WeightMask``."""
    return parametrize.is_parametrized(layer, "weight") and any(
        isinstance(p, WeightMask) for p in layer.parametrizations["weight"]
    )


def mask_of(layer: nn.Module) -> torch.Tensor:
    """The mask buffer of a masked layer."""
    for p in layer.parametrizations["weight"]:
        if isinstance(p, WeightMask):
            return p.mask
    raise KeyError("layer has no WeightMask")


def masked_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Every layer of ``module`` with a mask, by qualified name."""
    return {name: m for name, m in module.named_modules() if name and has_mask(m)}


def get_masks(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the masks of ``module``, by layer name."""
    return {name: mask_of(m).detach().clone() for name, m in masked_layers(module).items()}


@torch.no_grad()
def set_masks(module: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Copy ``masks`` (by layer name) into the registered mask buffers; unknown names are an error."""
    table = masked_layers(module)
    unknown = sorted(set(masks) - set(table))
    if unknown:
        raise KeyError(f"no masked layer named {unknown[0]!r} (masked: {sorted(table)[:5]}...)")
    for name, mask in masks.items():
        buf = mask_of(table[name])
        if mask.shape != buf.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, the weight {tuple(buf.shape)}")
        buf.copy_(mask.to(buf))


def prunable_weights(module: nn.Module, include_classifier: bool = False) -> dict[str, torch.Tensor]:
    """The *effective* weights (mask applied) of the prunable layers, by layer name."""
    return {name: m.weight for name, m in prunable_layers(module, include_classifier).items()}


def masks_from_scores(
    scores: dict[str, torch.Tensor], density: float, scope: Literal["global", "layerwise"] = "global"
) -> dict[str, torch.Tensor]:
    """Keep the highest-scoring ``density`` fraction of weights, over all layers or within each layer.

    Exactly ``round(density * n)`` weights are kept (ties broken by position, deterministically), where ``n``
    is the number of weights in the scope. ``density`` is ``1 - sparsity``.
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must lie in [0, 1], got {density}")
    if scope == "layerwise":
        return {name: _keep_top(s.flatten(), density).view_as(s) for name, s in scores.items()}
    if scope != "global":
        raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten().float() for n in names])
    keep = _keep_top(flat, density)
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[start : start + size].view_as(scores[n])
        start += size
    return out


def _keep_top(flat: torch.Tensor, density: float) -> torch.Tensor:
    k = round(density * flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.float32, device=flat.device)
    if k > 0:
        idx = torch.sort(flat.detach().float(), descending=True, stable=True).indices[:k]
        mask[idx] = 1.0
    return mask


def density_report(module: nn.Module) -> dict[str, dict[str, float]]:
    """Per masked layer: ``weights``, ``nonzero`` (of the effective weight) and ``density``."""
    report = {}
    for name, layer in masked_layers(module).items():
        w = layer.weight.detach()
        nz = int((w != 0).sum())
        report[name] = {"weights": w.numel(), "nonzero": nz, "density": nz / max(1, w.numel())}
    return report


def count_nonzero(module: nn.Module, include_classifier: bool = False) -> int:
    """Number of non-zero effective weights over the prunable layers of ``module``."""
    return sum(int((w.detach() != 0).sum()) for w in prunable_weights(module, include_classifier).values())
