"""Stochastic Subnetwork Annealing (SSA; Whitaker, arXiv 2401.08830, 2024; docs/methods/subnetwork.md).

A child is tuned towards a fixed target mask m* (chosen once, before tuning). Entries inside the target are always
kept; every entry outside it is kept with probability p(t), annealed from the initial temperature p₀ to 0 over
the first T_a optimiser steps (u = min(t/T_a, 1); T_a = 0 means u = 1 from the first step):

* ``linear``:      p(t) = p₀·(1 − u)
* ``cosine``:      p(t) = p₀·½(1 + cos πu)
* ``exponential``: p(t) = p₀·γ^t with γ = 10^(−3/T_a), i.e. p₀·10^(−3u), so p(T_a) = p₀·1e-3; clipped to 0 at u = 1

A fresh mask m(t) ~ Bernoulli(max(m*, p(t))) is drawn for every optimiser step (one mask per step, shared by
the batch) and applied in the forward pass as w ⊙ m(t) without rescaling by 1/p; every sampled weight receives
its gradient (the mask is a buffer of the weight's parametrization, nothing is detached), which is how "gradient
information bleeds through into the target subnetwork". After T_a steps the mask equals m*. The sample of step t
is a pure function of (child seed, t), so a resumed run draws the same masks.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Annealing = Literal["linear", "cosine", "exponential"]


def keep_probability(step: int, anneal_steps: int, p0: float, schedule: Annealing) -> float:
    """p(t): inclusion probability of a non-target weight at optimiser step ``step`` (0-based)."""
    if not 0.0 <= p0 <= 1.0:
        raise ValueError(f"p0 must lie in [0, 1], got {p0}")
    u = 1.0 if anneal_steps <= 0 else min(step / anneal_steps, 1.0)
    if u >= 1.0:
        return 0.0
    if schedule == "linear":
        return p0 * (1.0 - u)
    if schedule == "cosine":
        return p0 * 0.5 * (1.0 + math.cos(math.pi * u))
    if schedule == "exponential":
        return p0 * 10.0 ** (-3.0 * u)
    raise ValueError(f"unknown annealing schedule {schedule!r}; valid: linear, cosine, exponential")


def sample_mask(target: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """M ~ Bernoulli(P) with P = 1 on the target and p elsewhere (``target`` a {0,1} mask).

    The uniform draws are made on the generator's device (the target's, see :func:`sample_masks`), so on an
    accelerator a step's masks cost no host work and no host-to-device copy.
    """
    if p <= 0.0:
        return target.clone()
    if p >= 1.0:
        return torch.ones_like(target)
    draw = (torch.rand(target.shape, generator=generator, device=generator.device) < p).to(target.dtype)
    return torch.maximum(target, draw.to(target.device))


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator (on ``device``) of the mask drawn for optimiser step ``step`` of a child with mask seed ``seed``.

    The masks are a pure function of (seed, step) on each device type (CPU and CUDA draw different streams).
    """
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) % (2**63 - 1))


def sample_masks(
    targets: dict[str, torch.Tensor], step: int, anneal_steps: int, p0: float, schedule: Annealing, seed: int
) -> dict[str, torch.Tensor]:
    """The masks of every layer for optimiser step ``step`` (layers drawn in sorted-name order).

    The draws are made on the targets' device (keep the targets there: no copy per step).
    """
    p = keep_probability(step, anneal_steps, p0, schedule)
    gen = step_generator(seed, step, next(iter(targets.values())).device if targets else "cpu")
    return {name: sample_mask(targets[name], p, gen) for name in sorted(targets)}
