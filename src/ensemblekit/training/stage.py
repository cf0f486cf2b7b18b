"""What a method hands the engine: stages with their optimiser, schedule, loss and hooks.

A method never writes a training loop. It describes a recipe, a list of ``Stage`` objects, and the engine
runs them in order (``ensemblekit.training.engine``). Contract: every module a stage trains exists, with its
final structure, when the method builds the ensemble; stages and hooks only change values. That is what makes
a killed multi-stage run resumable: rebuild, load the checkpoint, continue at the recorded stage and epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ensemblekit.config import TrainConfig
from ensemblekit.training.stopping import StopSpec


@dataclass
class OptimSpec:
    """Optimiser settings of a stage (SGD with momentum/Nesterov, or AdamW).

    ``decay_bn_and_bias=False`` puts BatchNorm parameters and biases in a group without weight decay.
    """

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5.0e-4
    decay_bn_and_bias: bool = True
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class ScheduleSpec:
    """Learning-rate schedule of a stage; every schedule is stepped once per batch.

    Names: ``constant``, ``step`` (``milestones`` in epochs, ``gamma``), ``cosine`` (to ``min_lr``),
    ``onecycle`` (``pct_start`` warm-up from lr/``div_factor`` to lr, cosine to lr/``div_factor``/
    ``final_div_factor``; momentum cycled 0.95 -> 0.85 -> 0.95 for SGD), ``cyclic_cosine`` (Huang et al. 2017
    snapshot cycles: ``cycles`` restarts), ``flat_linear`` (the SWA/FGE schedule used by NFE and Prune-and-Tune:
    lr for the first half, linear to ``final_ratio``·lr at 90 %, then flat; computed per epoch), plus a linear
    warm-up of ``warmup_epochs`` in front of any of them except ``onecycle``.

    ``course_epochs``: the length of the course in which ``milestones`` and ``warmup_epochs`` are given. A stage of
    E epochs runs the whole course: epoch x of the course is epoch x·E/``course_epochs`` of the stage (a stage
    built from the ``train`` section has ``course_epochs = train.epochs``, so a 40-epoch MotherNets member stage
    of a 200-epoch course with milestones [60, 120, 160] decays at epochs 12, 24 and 32). ``None``: the stage's
    own epochs (no scaling). The other schedules are laid out over the stage's steps anyway.
    """

    name: str = "cosine"
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    cycles: int = 1
    min_lr: float = 0.0
    final_ratio: float = 0.01
    pct_start: float = 0.1
    div_factor: float = 100.0
    final_div_factor: float = 1.0e4
    course_epochs: float | None = None


def _needs_engine(what: str) -> Callable[..., Any]:
    def missing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"StageContext.{what} is filled in by the engine; this context was built without one")

    return missing


@dataclass
class StageContext:
    """What hooks see: the engine fills it in as the stage runs (``Engine.stage_context``).

    Besides where the stage is (``epoch``, ``step``, ``global_step``, ``loss``), it carries what hooks use of the
    engine, so methods never hold the engine itself:

    Attributes:
        cost_meter: The run's :class:`~ensemblekit.metrics.TrainCostMeter`; hooks charge the work they do outside
            optimiser steps to it (``add_step``, ``add_time``, ``timer``). ``None`` outside the engine.
        image_shape: ``(C, H, W)`` of the training images.
        world_size: Processes training together (DDP); 1 otherwise.
        train_labels: Labels ``[N]`` of the training set (class-balanced samples).
        sample_batches: ``(num_batches, seed, *, batch_size=None, augment=None, indices=None) -> [(x, y), ...]``:
            training batches on the device, a pure function of ``seed``
            (:meth:`~ensemblekit.training.engine.Engine.sample_batches`).
        member_probs: ``(module, split) -> (probs [M, N, C], labels [N])`` on the ``test`` or ``val`` split.
        steps_per_epoch: ``(stage) -> int``: optimiser steps one epoch of ``stage`` takes (per process).
        sync_buffers: ``() -> None``: every process takes rank 0's buffers (masks, BN statistics).
        log_event: ``(name, **fields) -> None``: an entry in the run's ``events.jsonl``.
    """

    stage: Stage
    stage_index: int
    ensemble: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    loss: float | None = None
    cost_meter: Any = None
    image_shape: tuple[int, ...] = (3, 32, 32)
    world_size: int = 1
    train_labels: torch.Tensor | None = None
    sample_batches: Callable[..., list[tuple[torch.Tensor, torch.Tensor]]] = field(
        default_factory=lambda: _needs_engine("sample_batches")
    )
    member_probs: Callable[[nn.Module, str], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=lambda: _needs_engine("member_probs")
    )
    steps_per_epoch: Callable[[Stage], int] = field(default_factory=lambda: _needs_engine("steps_per_epoch"))
    sync_buffers: Callable[[], None] = lambda: None
    log_event: Callable[..., None] = lambda name, **fields: None


Hook = Callable[[StageContext], None]


@dataclass
class StageHooks:
    """Callbacks the engine runs: after every optimiser step, after every epoch, and at the stage's end."""

    after_step: list[Hook] = field(default_factory=list)
    after_epoch: list[Hook] = field(default_factory=list)
    at_end: list[Hook] = field(default_factory=list)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BatchFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
ParamGroupsFn = Callable[[nn.Module], list[dict[str, Any]]]


@dataclass
class Stage:
    """One stage of a recipe: train ``module`` for ``epochs`` epochs (at most, with ``stop``).

    Args:
        name: Unique within the recipe (e.g. ``member_0``, ``parent``, ``mothernet``); shown and logged.
        module: The module trained in this stage; its forward returns ``[B, C]`` or member logits ``[M, B, C]``.
        epochs: Number of epochs (0 skips training but still runs ``at_end`` hooks).
        optim: Optimiser settings.
        schedule: Learning-rate schedule.
        loss: ``loss(outputs, targets)``; default ``member_cross_entropy`` with ``member_loss`` reduction.
        data_seed: Seed of the data order and augmentation of this stage (members get their own).
        train_indices: Optional rows of the training set (with repeats for bootstrap samples).
        prepare_batch: Optional ``(x, y) -> (x, y)`` applied to every training batch (tiling, MIMO slots).
        param_groups: Optional ``module -> list of param-group dicts`` (learning-rate multipliers, no decay).
        hooks: Callbacks.
        member_loss: ``mean`` or ``sum`` over members for the default loss.
        label_smoothing: Label smoothing of the default loss.
        grad_clip: Optional max gradient norm.
        flops_per_image: Training forward FLOPs per image; measured by the engine when None.
        stop: Optional plateau stopping (:class:`~ensemblekit.training.stopping.StopSpec`): ``epochs`` is then a
            cap, and the stage ends once the validation metric has not improved for ``patience`` epochs. The
            schedule is laid out over the cap.
        hoist: A 0-epoch stage whose hooks only prepare the next stage's module (independent of the stages
            before it), so packing may run it before earlier members train.
        packed: The member stages this stage trains together in one pass (``runtime.member_execution: packed``,
            see ``ensemblekit.training.packed_members``); ``None`` for an ordinary stage.
        needs: The names of the earlier stages this stage depends on (it reads or changes what they trained);
            ``None``: every stage before it (the sequential meaning), ``()``: none. Member-parallel training
            (``runtime.parallel: members``, :mod:`ensemblekit.training.member_parallel`) runs stages that do not
            need one another on different processes at the same time. A stage whose hooks change modules that
            other stages train must keep ``None`` (or name them).
    """

    name: str
    module: nn.Module
    epochs: int
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    loss: LossFn | None = None
    data_seed: int = 0
    train_indices: torch.Tensor | None = None
    prepare_batch: BatchFn | None = None
    param_groups: ParamGroupsFn | None = None
    hooks: StageHooks = field(default_factory=StageHooks)
    member_loss: str = "mean"
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    flops_per_image: float | None = None
    stop: StopSpec | None = None
    hoist: bool = False
    packed: list[Stage] | None = None
    needs: tuple[str, ...] | None = None


def optim_from_train(train: TrainConfig) -> OptimSpec:
    """The ``OptimSpec`` of the config's ``train`` section."""
    return OptimSpec(
        name=train.optimizer,
        lr=train.lr,
        momentum=train.momentum,
        nesterov=train.nesterov,
        weight_decay=train.weight_decay,
        decay_bn_and_bias=train.decay_bn_and_bias,
    )


def schedule_from_train(train: TrainConfig) -> ScheduleSpec:
    """The ``ScheduleSpec`` of the config's ``train`` section."""
    return ScheduleSpec(
        name=train.schedule,
        milestones=list(train.milestones),
        gamma=train.gamma,
        warmup_epochs=train.warmup_epochs,
        cycles=train.cycles,
        min_lr=train.min_lr,
        course_epochs=train.epochs,
    )


def stage_from_train(name: str, module: nn.Module, train: TrainConfig, **overrides: Any) -> Stage:
    """A stage that follows the config's ``train`` section; keyword arguments override any field."""
    kwargs: dict[str, Any] = {
        "epochs": train.epochs,
        "optim": optim_from_train(train),
        "schedule": schedule_from_train(train),
        "data_seed": train.seed,
        "member_loss": train.member_loss,
        "label_smoothing": train.label_smoothing,
        "grad_clip": train.grad_clip,
    }
    kwargs.update(overrides)
    return Stage(name=name, module=module, **kwargs)
