"""``fge``: Fast Geometric Ensembling (Garipov et al., NeurIPS 2018).

"Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs".

Pre-train one network with the config's ``train`` recipe (or load it: ``pretrain_run`` / ``pretrain_weights``),
then run M cycles of c epochs (c even) with the piecewise-linear schedule (docs/methods/fge.md)

    τ = (mod(i − 1, L) + 1)/L,  lr = (1 − 2τ)·α₁ + 2τ·α₂ for τ ≤ ½,  (2 − 2τ)·α₂ + (2τ − 1)·α₁ otherwise,

(L = c epochs of steps; the ``linear_cyclic`` schedule), collecting a model at every learning-rate minimum
(τ = ½: the end of epoch c/2 of each cycle, as the official code's ``epoch % cycle + 1 == cycle // 2``) through
an ``after_epoch`` hook of the engine. Predictions average the members' softmax outputs. Training cost:
pre-training + M·c epochs (the last half cycle is trained as in the official code, then unused).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator
from torch import nn

from ensemblekit.config import config_to_dict
from ensemblekit.ensemble import Ensemble, MemberEnsemble
from ensemblekit.methods.base import METHODS, Method, MethodOptions, RunReader
from ensemblekit.methods.snapshot import copy_into
from ensemblekit.methods.subnetwork.parent import parent_loader
from ensemblekit.training.stage import ScheduleSpec, Stage, StageContext, StageHooks, optim_from_train, stage_from_train


class FGEOptions(MethodOptions):
    """Options of ``fge``.

    Attributes:
        members: Collected models M (= number of cycles).
        pretrain_epochs: Pre-training epochs (default ``train.epochs``); 0 with ``pretrain_run``/``_weights``.
        cycle_epochs: Cycle length c in epochs (even; Garipov et al. use 2-4).
        lr1: α₁, the learning rate at the start and end of a cycle.
        lr2: α₂, the learning rate at the middle of a cycle, where models are collected.
        pretrain_run: A finished ``single`` or ``subnetwork`` run whose (parent) backbone is the pre-trained net.
        pretrain_weights: A backbone ``state_dict`` file used as the pre-trained net.
        charge_pretrain: Charge the ``pretrain_run``'s training cost to this run's ``pretrain`` stage.
    """

    members: int = Field(default=12, gt=0)
    pretrain_epochs: int | None = Field(default=None, ge=0)
    cycle_epochs: int = Field(default=2, ge=2)
    lr1: float = Field(default=5.0e-2, gt=0)
    lr2: float = Field(default=5.0e-4, gt=0)
    pretrain_run: str | None = None
    pretrain_weights: str | None = None
    charge_pretrain: bool = True

    @model_validator(mode="after")
    def _cycle_and_source(self) -> FGEOptions:
        if self.cycle_epochs % 2:
            raise ValueError(f"cycle_epochs: must be even (got {self.cycle_epochs})")
        if self.pretrain_run is not None and self.pretrain_weights is not None:
            raise ValueError("pretrain_run: give pretrain_run or pretrain_weights, not both")
        return self


@METHODS.register("fge")
class FGE(Method):
    """Pre-train, then collect a model at each minimum of a cyclic linear learning rate."""

    Options = FGEOptions
    summary = "Fast Geometric Ensembling: cyclic linear lr after pre-training (Garipov et al., 2018)"

    def __init__(self, cfg, num_classes: int, train_size: int, runs: RunReader | None = None) -> None:
        super().__init__(cfg, num_classes, train_size, runs)
        self.worker: nn.Module | None = None

    def build(self) -> Ensemble:
        self.worker = self.backbone()  # built first: pre-training from scratch equals ``single``
        return MemberEnsemble([self.backbone() for _ in range(self.options.members)])

    def state_modules(self, ensemble: Ensemble) -> dict[str, nn.Module]:
        return {"ensemble": ensemble, "worker": self.worker}

    def _model_cfg(self) -> dict[str, Any]:
        return config_to_dict(self.cfg)["model"]

    def recipe(self, ensemble: Ensemble) -> list[Stage]:
        o, train = self.options, self.cfg.train
        loads = o.pretrain_run is not None or o.pretrain_weights is not None
        epochs = 0 if loads else (train.epochs if o.pretrain_epochs is None else o.pretrain_epochs)
        hooks = StageHooks()
        if loads:
            hooks.at_end.append(
                parent_loader(
                    self.runs if o.pretrain_run else None,
                    o.pretrain_run,
                    o.pretrain_weights,
                    o.charge_pretrain,
                    self._model_cfg(),
                    "pretrain",
                )
            )
        pretrain = stage_from_train(
            "pretrain", self.worker, train, epochs=epochs, data_seed=self.member_seed(0), hooks=hooks
        )

        half = o.cycle_epochs // 2

        def collect(ctx: StageContext) -> None:
            if ctx.epoch % o.cycle_epochs + 1 == half:
                copy_into(ensemble.members[ctx.epoch // o.cycle_epochs], ctx.module)

        optim = optim_from_train(train)
        optim.lr = o.lr1
        schedule = ScheduleSpec(name="linear_cyclic", cycles=o.members, final_ratio=o.lr2 / o.lr1)
        cycles = Stage(
            "fge",
            self.worker,
            o.members * o.cycle_epochs,
            optim=optim,
            schedule=schedule,
            data_seed=self.member_seed(1),
            hooks=StageHooks(after_epoch=[collect]),
            member_loss=train.member_loss,
            label_smoothing=train.label_smoothing,
            grad_clip=train.grad_clip,
        )
        return [pretrain, cycles]
