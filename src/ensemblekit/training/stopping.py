"""Plateau stopping of a stage: end it when a validation metric has stopped improving.

A stage with ``Stage.stop`` set trains for at most ``Stage.epochs`` epochs (the cap) and ends earlier once its
validation metric has not improved by more than ``min_delta`` for ``patience`` consecutive epochs ("train until
convergence", e.g. MotherNets, Wasay et al. MLSys 2020). The weights of the last epoch are kept. The stopper's
state is a small dict the engine writes into every checkpoint, so a killed and resumed run stops at the same epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MONITORS = {"val_accuracy": "max", "val_nll": "min"}


@dataclass
class StopSpec:
    """When a stage stops before its cap of ``Stage.epochs`` epochs.

    Attributes:
        patience: Epochs without improvement after which the stage ends (p ≥ 1).
        min_delta: An epoch improves on the best value v* when it beats it by more than ``min_delta``:
            v > v* + δ for ``val_accuracy``, v < v* − δ for ``val_nll``.
        monitor: ``val_accuracy`` (higher is better) or ``val_nll`` (lower is better), measured on the validation
            split (``data.val_size`` > 0) after every epoch.
    """

    patience: int = 5
    min_delta: float = 0.0
    monitor: str = "val_accuracy"

    def __post_init__(self) -> None:
        if self.monitor not in MONITORS:
            raise ValueError(f"unknown monitor {self.monitor!r}; valid: {', '.join(MONITORS)}")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1 (got {self.patience})")


class PlateauStopper:
    """Tracks the best value of the monitored metric and the epochs since it improved.

    Args:
        spec: The stage's ``StopSpec``.
    """

    def __init__(self, spec: StopSpec) -> None:
        self.spec = spec
        self.best = -math.inf if MONITORS[spec.monitor] == "max" else math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.epochs_run = 0
        self.stopped = False

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats the best value by more than ``min_delta``."""
        if MONITORS[self.spec.monitor] == "max":
            return value > self.best + self.spec.min_delta
        return value < self.best - self.spec.min_delta

    def update(self, stats: dict[str, float], epoch: int) -> bool:
        """Record epoch ``epoch`` (1-based) from its stats; return True when the stage must stop now."""
        value = float(stats[self.spec.monitor])
        self.epochs_run = epoch
        if self.improves(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        self.stopped = self.bad_epochs >= self.spec.patience
        return self.stopped

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "epochs_run": self.epochs_run,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.epochs_run = int(state["epochs_run"])
        self.stopped = bool(state["stopped"])
