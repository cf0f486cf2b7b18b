"""Pruning-at-initialisation criteria: per-weight scores, higher = more important (keep).

Every criterion returns ``{layer name: scores}`` with the shape of the layer's weight; the mask keeps the
highest scores (:func:`ensemblekit.pruning.masks.masks_from_scores`, global or layer-wise). Scores are computed
on the *effective* weights of the given layers (a masked layer's zeros score 0 wherever the formula has a
factor ``w``). The network is left as it was (criteria that change weights work on a copy; gradients are taken
with ``torch.autograd.grad`` and never accumulate in ``.grad``).

* ``random``: uniform noise (keeps each weight with probability ≈ density);
* ``magnitude``: |w| (magnitude at initialisation);
* ``snip``: |g ⊙ w| (Lee, Ajanthan & Torr, ICLR 2019);
* ``grasp``: w ⊙ (H g), the negated GraSP score (Wang, Zhang & Grosse, ICLR 2020);
* ``synflow``: iterative, data-free |∂R/∂w ⊙ w| (Tanaka, Kunin, Yamins & Ganguli, NeurIPS 2020).

Network Fission Ensembles (Lee & Lee, 2024; docs/methods/fission.md) prune with SNIP and report robustness to the
others.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ensemblekit.pruning.masks import masks_from_scores

CRITERIA: tuple[str, ...] = ("random", "magnitude", "snip", "grasp", "synflow")
Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def _weights(net: nn.Module, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    table = dict(net.named_modules())
    return {name: table[name].weight for name in layers}


def random_scores(net: nn.Module, layers: Sequence[str], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Uniform scores u ~ U[0, 1): a threshold at density d keeps a random d fraction of the weights.

    Random pruning is the baseline of every PaI paper (e.g. Frankle et al., "Pruning Neural Networks at
    Initialization: Why are We Missing the Mark?", ICLR 2021). Drawn on CPU from ``generator`` (deterministic).
    """
    return {name: torch.rand(w.shape, generator=generator).to(w.device) for name, w in _weights(net, layers).items()}


def magnitude_scores(net: nn.Module, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Magnitude at initialisation, s_j = |w_j| (the keep-the-largest baseline of Frankle et al., ICLR 2021)."""
    return {name: w.detach().abs() for name, w in _weights(net, layers).items()}


SnipLoss = Literal["cross_entropy", "logit_nll"]


def snip_scores(
    net: nn.Module, layers: Sequence[str], batches: Batches, loss: SnipLoss = "cross_entropy"
) -> dict[str, torch.Tensor]:
    """SNIP connection sensitivity, s_j = |∂L/∂c_j| at c = 1, which equals |g_j · w_j|.

    Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity", ICLR 2019.
    L is the cross-entropy (mean over each batch) of the network in its current mode (NFE's code scores in train
    mode, BN on batch statistics); g = Σ_batches ∂L/∂w. The normalisation by Σ_j s_j of the paper does not
    change the ranking and is left out. ``loss="logit_nll"`` is the official NFE code's loss (Lee & Lee, 2024):
    the negative log-likelihood applied to raw logits, L = −(1/B) Σ_b z_{b, y_b} (no log-softmax).
    """
    if loss not in ("cross_entropy", "logit_nll"):
        raise ValueError(f"unknown SNIP loss {loss!r}; valid: cross_entropy, logit_nll")
    weights = _weights(net, layers)
    grads = {name: torch.zeros_like(w) for name, w in weights.items()}
    for x, y in batches:
        z = net(x).float()
        value = F.cross_entropy(z, y) if loss == "cross_entropy" else F.nll_loss(z, y)
        for name, g in zip(weights, torch.autograd.grad(value, list(weights.values())), strict=True):
            grads[name] += g
    return {name: (grads[name] * w.detach()).abs() for name, w in weights.items()}


def grasp_scores(
    net: nn.Module, layers: Sequence[str], batches: Batches, temperature: float = 200.0
) -> dict[str, torch.Tensor]:
    """Negated GraSP score, s_j = (w ⊙ H g)_j: keeping the highest keeps what preserves gradient flow.

    Wang, Zhang & Grosse, "Picking Winning Tickets Before Training by Preserving Gradient Flow", ICLR 2020.
    GraSP scores S(−w) = −w ⊙ H g, with g = ∂L/∂w and H the Hessian of L, and removes the weights with the
    *largest* S; we return −S so that, as for every criterion here, the highest scores are kept. As in the
    official code, L is the cross-entropy of logits divided by ``temperature`` (200); g is summed over the
    batches and detached, then H g = ∂(g·∂L/∂w)/∂w is summed over the same batches.
    """
    weights = _weights(net, layers)
    params = list(weights.values())
    g = [torch.zeros_like(w) for w in params]
    for x, y in batches:
        loss = F.cross_entropy(net(x).float() / temperature, y)
        for acc, gi in zip(g, torch.autograd.grad(loss, params), strict=True):
            acc += gi
    hg = [torch.zeros_like(w) for w in params]
    for x, y in batches:
        loss = F.cross_entropy(net(x).float() / temperature, y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        z = sum((gi * gd).sum() for gi, gd in zip(grads, g, strict=True))
        for acc, h in zip(hg, torch.autograd.grad(z, params), strict=True):
            acc += h
    return {name: (w.detach() * h) for (name, w), h in zip(weights.items(), hg, strict=True)}


def synflow_scores(
    net: nn.Module,
    layers: Sequence[str],
    density: float,
    *,
    image_shape: Sequence[int] = (3, 32, 32),
    rounds: int = 100,
    scope: Literal["global", "layerwise"] = "global",
) -> dict[str, torch.Tensor]:
    """Iterative synaptic flow, data-free (no batches): s_j = |∂R/∂w_j · w_j| with R = 1ᵀ(Π_l |W_l|) 1.

    Tanaka, Kunin, Yamins & Ganguli, "Pruning neural networks without any data by iteratively conserving synaptic flow",
    NeurIPS 2020. On a float64 copy in eval mode whose parameters and buffers are replaced by their absolute values, R
    is the sum of the outputs for one all-ones input of ``image_shape`` (one example's shape without the batch axis,
    ``[C, H, W]`` for images). In round k = 1..``rounds`` the scores of the surviving weights are recomputed and the
    mask is reset to the top ``density^(k/rounds)`` (exponential schedule), globally or per layer as ``scope`` says.

    Returns:
        The last round's scores, with the weights pruned in earlier rounds at −1, so that a threshold at
        ``density`` (same ``scope``) gives exactly the final mask.
    """
    work = copy.deepcopy(net).double().eval()
    with torch.no_grad():
        for t in [*work.parameters(), *work.buffers()]:
            if t.is_floating_point():
                t.abs_()
    table = dict(work.named_modules())
    params = [table[name].weight for name in layers]
    originals = [p.detach().clone() for p in params]
    masks = {name: torch.ones_like(p) for name, p in zip(layers, params, strict=True)}
    device = params[0].device if params else torch.device("cpu")
    ones = torch.ones((1, *image_shape), dtype=torch.float64, device=device)
    scores: dict[str, torch.Tensor] = {}
    for k in range(1, rounds + 1):
        with torch.no_grad():
            for name, p, w0 in zip(layers, params, originals, strict=True):
                p.copy_(w0 * masks[name])
        r = work(ones).sum()
        grads = torch.autograd.grad(r, params)
        scores = {
            name: torch.where(masks[name] > 0, (g * p.detach()).abs(), torch.full_like(p, -1.0)).float()
            for name, p, g in zip(layers, params, grads, strict=True)
        }
        masks = {n: m.to(torch.float64) for n, m in masks_from_scores(scores, density ** (k / rounds), scope).items()}
    return {name: s.to(table[name].weight.device) for name, s in scores.items()}


def compute_scores(
    criterion: str,
    net: nn.Module,
    layers: Sequence[str],
    *,
    batches: Batches = (),
    density: float = 0.5,
    generator: torch.Generator | None = None,
    scope: Literal["global", "layerwise"] = "global",
    image_shape: Sequence[int] = (3, 32, 32),
    synflow_rounds: int = 100,
    grasp_temperature: float = 200.0,
    snip_loss: SnipLoss = "cross_entropy",
) -> dict[str, torch.Tensor]:
    """Scores of ``criterion`` (one of :data:`CRITERIA`) for ``layers`` of ``net``; see the functions above."""
    if criterion == "random":
        return random_scores(net, layers, generator if generator is not None else torch.Generator().manual_seed(0))
    if criterion == "magnitude":
        return magnitude_scores(net, layers)
    if criterion == "snip":
        return snip_scores(net, layers, batches, snip_loss)
    if criterion == "grasp":
        return grasp_scores(net, layers, batches, grasp_temperature)
    if criterion == "synflow":
        return synflow_scores(net, layers, density, image_shape=image_shape, rounds=synflow_rounds, scope=scope)
    raise ValueError(f"unknown pruning criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
