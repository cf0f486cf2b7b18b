"""``method.reference: official``: Network Fission Ensembles as the official code trains (Lee & Lee, 2024).

The official code (``hjdw2/NFE``, ``snip.py`` and ``train_exit*.py``; docs/methods/fission.md) differs from the
corrected default in four ways, all switched together by ``reference: official``:

1. **Gradient-hook masks.** A hook multiplies each conv weight's gradient by its mask; the line meant to zero the
   pruned weights is unreachable. Pruned and other-path weights therefore keep their initial values in the
   forward pass, get zero gradient and fade only through weight decay (plain SGD: w ← w·(1 − lr·wd) per step).
   Here: ``WeightMask(enforce="gradient")`` (:mod:`ensemblekit.pruning.masks`).
2. **Independent initialisation.** Every module of the multi-exit network (stage copies, shortcuts, heads) has
   its own initialisation (``path_init: independent``); the trained network is not the scored one.
3. **SNIP scoring copy.** The conv weights of the scoring copy are re-initialised Xavier-normal
   (:func:`xavier_scoring_copy`), and the SNIP loss is the NLL on raw logits, L = −(1/B) Σ_b z_{b,y_b}.
4. **Shortcuts in the ranking.** The 1x1 shortcut convs are scored and take part in the global threshold; their
   masks are then dropped (the code leaves 1x1 convs without a hook), so shortcuts stay dense per path.

Not reproduced even here: the N = 3 overlapping grouping with −1 entries, the final BN momentum 0.9, conv
biases and best-test-epoch model selection (docs/methods/fission.md).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def xavier_scoring_copy(net: nn.Module, seed: int) -> nn.Module:
    """A copy of ``net`` whose every ``Conv2d`` weight is re-drawn Xavier-normal, N(0, 2 / (fan_in + fan_out)).

    Glorot & Bengio, AISTATS 2010; the official NFE ``snip.py`` re-initialises the scoring copy this way. Other
    parameters (classifier, BN, biases) are copied unchanged; ``net`` is left as it was. Drawn on CPU from a
    generator seeded with ``seed`` (deterministic), then moved to ``net``'s device.
    """
    device = next(net.parameters()).device
    work = copy.deepcopy(net).cpu()
    generator = torch.Generator().manual_seed(seed)
    for module in work.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_normal_(module.weight, generator=generator)
    return work.to(device)
