"""Optimisers and per-batch learning-rate schedules built from a stage's ``OptimSpec``/``ScheduleSpec``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ensemblekit.errors import UserError
from ensemblekit.training.stage import OptimSpec, ScheduleSpec

NORMALIZATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)


def is_normalization(module: nn.Module | None) -> bool:
    """Whether ``module`` is a normalisation layer: a torch norm layer or one flagged ``is_normalization = True``."""
    return isinstance(module, NORMALIZATION_TYPES) or bool(getattr(module, "is_normalization", False))


def is_bn_or_bias(name: str, module_of: dict[str, nn.Module]) -> bool:
    """Whether the parameter ``name`` is a normalisation parameter or a bias, judged by role, not by shape.

    A parameter is a bias when its attribute name is ``bias``; it is a normalisation parameter when the module
    that owns it is a normalisation layer (``is_normalization``). Other parameters are weights whatever their
    number of dimensions (e.g. MixtureEnsembles' flat 1-D template blob is a weight).
    """
    owner_name, _, leaf = name.rpartition(".")
    return leaf == "bias" or is_normalization(module_of.get(owner_name))


def default_param_groups(module: nn.Module, spec: OptimSpec) -> list[dict[str, Any]]:
    """All trainable parameters in one group, or two when BN parameters and biases are excluded from decay."""
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if spec.decay_bn_and_bias:
        return [{"params": [p for _, p in params]}]
    module_of = dict(module.named_modules())
    decay = [p for n, p in params if not is_bn_or_bias(n, module_of)]
    no_decay = [p for n, p in params if is_bn_or_bias(n, module_of)]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(groups: list[dict[str, Any]], spec: OptimSpec, *, fused: bool = False) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over parameter groups.

    A group may carry ``lr_mult`` (multiplies the stage's learning rate, e.g. BatchEnsemble fast weights) and
    its own ``weight_decay``. ``fused`` selects PyTorch's fused kernels (one launch for all parameters; CUDA,
    floating-point parameters only), the same update rule as the default foreach implementation.
    """
    groups = [dict(g) for g in groups if len(list(g["params"])) > 0]
    for g in groups:
        g["lr"] = spec.lr * g.pop("lr_mult", 1.0)
        g.setdefault("weight_decay", spec.weight_decay)
    if not groups:
        raise UserError("nothing to train: the stage's module has no trainable parameters")
    extra = {"fused": True} if fused else {}
    if spec.name == "sgd":
        nesterov = spec.nesterov and spec.momentum > 0
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=nesterov, **extra)
    if spec.name == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, **extra)
    raise UserError(f"unknown optimizer {spec.name!r}; valid: sgd, adamw")


def lr_factor(spec: ScheduleSpec, step: int, steps_per_epoch: int, epochs: int, base_lr: float) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    Formulas (t = step, T = total steps, e = epoch of t, E = epochs):
      * cosine: m + (1 - m)·½(1 + cos(π t/T)), m = min_lr/base_lr.
      * step: γ^(number of milestones ≤ t/steps_per_epoch).
      * cyclic_cosine (Huang et al. 2017): ½(cos(π·mod(t, ⌈T/K⌉)/⌈T/K⌉) + 1), K = cycles.
      * flat_linear (Izmailov et al. 2018; used by NFE and Prune-and-Tune): with α = e/E, 1 for α ≤ ½,
        1 − (1 − r)(α − ½)/0.4 for ½ < α ≤ 0.9, r afterwards, r = final_ratio.
      * linear_cyclic (Garipov et al. 2018, FGE): K = cycles cycles of L = ⌈T/K⌉ steps, τ = (mod(t, L) + 1)/L,
        (1 − 2τ) + 2τ·r for τ ≤ ½ and (2 − 2τ)·r + (2τ − 1) otherwise, r = final_ratio = α₂/α₁: α₁ → α₂ → α₁.
      * warm-up: linear (t+1)/W over the first W = warmup_epochs·steps_per_epoch steps, then the schedule
        over the remaining steps.

    Milestones and warm-up are given in epochs of a course of ``spec.course_epochs`` = C epochs; the stage runs
    the whole course over its E epochs, so they are scaled by E/C (a milestone m fires at stage epoch m·E/C).
    """
    total = max(1, steps_per_epoch * epochs)
    course = spec.course_epochs
    scaled = bool(course) and course != epochs
    warmup = spec.warmup_epochs * epochs / course if scaled else spec.warmup_epochs
    warm = round(warmup * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    t, span = step - warm, max(1, total - warm)
    name = spec.name
    if name == "constant":
        return 1.0
    if name == "cosine":
        m = spec.min_lr / base_lr if base_lr > 0 else 0.0
        return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * min(t, span) / span))
    if name == "step":
        if scaled:  # step/spe ≥ m·E/C, cross-multiplied so that integer milestones fire exactly on their step
            return spec.gamma ** sum(1 for ms in spec.milestones if step * course >= ms * epochs * steps_per_epoch)
        epoch = step / max(1, steps_per_epoch)
        return spec.gamma ** sum(1 for ms in spec.milestones if epoch >= ms)
    if name == "cyclic_cosine":
        cycle = math.ceil(span / spec.cycles)
        return 0.5 * (math.cos(math.pi * (t % cycle) / cycle) + 1)
    if name == "linear_cyclic":
        cycle = math.ceil(span / spec.cycles)
        tau = ((t % cycle) + 1) / cycle
        r = spec.final_ratio
        return (1 - 2 * tau) + 2 * tau * r if tau <= 0.5 else (2 - 2 * tau) * r + (2 * tau - 1)
    if name == "flat_linear":
        alpha = (step // max(1, steps_per_epoch)) / max(1, epochs)
        r = spec.final_ratio
        if alpha <= 0.5:
            return 1.0
        if alpha <= 0.9:
            return 1.0 - (1.0 - r) * (alpha - 0.5) / 0.4
        return r
    raise UserError(f"unknown schedule {name!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: ScheduleSpec, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler stepped once per batch (after ``optimizer.step()``)."""
    if spec.name == "onecycle":
        max_lrs = [g["lr"] for g in optimizer.param_groups]
        cycle_momentum = "momentum" in optimizer.defaults and optimizer.defaults.get("momentum", 0) > 0
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=max_lrs,
            total_steps=max(2, steps_per_epoch * epochs),
            pct_start=spec.pct_start,
            anneal_strategy="cos",
            div_factor=spec.div_factor,
            final_div_factor=spec.final_div_factor,
            cycle_momentum=cycle_momentum,
        )
    base = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(spec, step, steps_per_epoch, epochs, base)
    )
