"""``snapshot``: Snapshot Ensembles (Huang et al., "Snapshot Ensembles: Train 1, get M for free", ICLR 2017).

One training run of T steps (``train.epochs``, or K·``cycle_epochs``) with K cosine cycles and warm restarts
(docs/methods/snapshot.md):

    lr(t) = (α₀/2)·(cos(π·mod(t, ⌈T/K⌉)/⌈T/K⌉) + 1)          (the ``cyclic_cosine`` schedule, α₀ = train.lr)

A snapshot of the working network is taken at the end of every cycle (lr ≈ 0) by an ``after_epoch`` hook of
the engine and copied into a member slot; the ensemble is the last M snapshots, predictions averaged over
softmax outputs. Training cost ≈ one model trained T steps; inference and parameters M×.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from torch import nn

from ensemblekit.config import Config
from ensemblekit.ensemble import Ensemble, MemberEnsemble
from ensemblekit.errors import config_error
from ensemblekit.methods.base import METHODS, Method, MethodOptions, RunReader
from ensemblekit.training.stage import ScheduleSpec, Stage, StageContext, StageHooks, stage_from_train


class SnapshotOptions(MethodOptions):
    """Options of ``snapshot``.

    Attributes:
        members: Snapshots in the ensemble M (the last M cycles).
        cycles: Number of cycles K (default M).
        cycle_epochs: Epochs per cycle; the run then trains K·``cycle_epochs`` epochs. Default: ``train.epochs``
            split into K cycles (it must be a multiple of K, so that every cycle ends at an epoch boundary).
    """

    members: int = Field(default=5, gt=0)
    cycles: int | None = Field(default=None, gt=0)
    cycle_epochs: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _enough_cycles(self) -> SnapshotOptions:
        if self.cycles is not None and self.cycles < self.members:
            raise ValueError(f"cycles: must be >= members ({self.members})")
        return self

    @property
    def num_cycles(self) -> int:
        """K: ``cycles``, or M when unset."""
        return self.cycles or self.members


def copy_into(slot: nn.Module, worker: nn.Module) -> None:
    """Slot ← worker (parameters and buffers, bitwise)."""
    slot.load_state_dict(worker.state_dict())


@METHODS.register("snapshot")
class Snapshot(Method):
    """Snapshots at the ends of K cosine cycles with warm restarts."""

    Options = SnapshotOptions
    summary = "Snapshot Ensembles: K cosine cycles, a snapshot per cycle (Huang et al., 2017)"

    def __init__(self, cfg, num_classes: int, train_size: int, runs: RunReader | None = None) -> None:
        super().__init__(cfg, num_classes, train_size, runs)
        self.cycles = self.options.num_cycles
        self.worker: nn.Module | None = None

    @classmethod
    def check_config(cls, cfg: Config, options: SnapshotOptions) -> None:
        """Without ``cycle_epochs``, ``train.epochs`` must split into K equal cycles (each ends at an epoch)."""
        k = options.num_cycles
        if options.cycle_epochs is None and cfg.train.epochs % k:
            raise config_error(
                "train.epochs",
                f"{cfg.train.epochs} epochs cannot form {k} equal snapshot cycles (use a multiple of {k}, or set "
                "method.cycle_epochs)",
            )

    def build(self) -> Ensemble:
        self.worker = self.backbone()  # built first: the same initialisation as ``single``
        return MemberEnsemble([self.backbone() for _ in range(self.options.members)])

    def state_modules(self, ensemble: Ensemble) -> dict[str, nn.Module]:
        return {"ensemble": ensemble, "worker": self.worker}

    def recipe(self, ensemble: Ensemble) -> list[Stage]:
        train, members = self.cfg.train, self.options.members
        per_cycle = self.options.cycle_epochs or train.epochs // self.cycles
        first_kept = self.cycles - members

        def collect(ctx: StageContext) -> None:
            if (ctx.epoch + 1) % per_cycle == 0:
                cycle = (ctx.epoch + 1) // per_cycle - 1
                if cycle >= first_kept:
                    copy_into(ensemble.members[cycle - first_kept], ctx.module)

        schedule = ScheduleSpec(name="cyclic_cosine", cycles=self.cycles)
        return [
            stage_from_train(
                "snapshot",
                self.worker,
                train,
                epochs=per_cycle * self.cycles,
                schedule=schedule,
                data_seed=self.member_seed(0),
                hooks=StageHooks(after_epoch=[collect]),
            )
        ]
