"""Training cost accounting in FLOPs, images and seconds, per stage of a method's recipe.

Low-cost ensemble papers differ in epoch budgets, batch repetition, sparse phases and multi-stage
recipes, so training cost is reported in one unit: **single-model epoch equivalents**. One epoch of the
single (dense) backbone over the full training set costs 1.0:

    train_flops             = Σ_steps images · forward_flops_per_image · (3 if backward else 1)
    train_epoch_equivalents = train_flops / (3 · single_forward_flops · train_set_size)

A training step costs about 3× its forward pass: the backward pass computes gradients with respect to
both activations and weights, each about as expensive as the forward (Kaplan et al., 2020, "Scaling
Laws for Neural Language Models", C ≈ 6·N per token = 2·N forward + 4·N backward). Forward-only work
charged to training (BN statistics refresh, snapshot/FGE evaluation passes, teacher forwards in
distillation) costs 1×. A deep ensemble of M members trained E epochs therefore costs M·E, MIMO with
batch repetition r costs about r·E (times its slightly wider forward), and a sparse member whose forward
takes a fraction f of the dense FLOPs costs f per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEFAULT_STAGE = "default"
"""Stage charged when steps or time arrive before any :meth:`TrainCostMeter.start_stage`."""

_STATE_VERSION = 1


class TrainCostMeter:
    """Accumulate training FLOPs, images and wall time per stage; report epoch equivalents.

    See the module docstring for the formula. Stages are kept in the order they were first started;
    starting a stage name that already exists (e.g. after resuming from a checkpoint) continues adding to
    its totals instead of resetting them.

    Args:
        single_forward_flops: FLOPs per image of one forward pass of the single backbone (the unit's
            reference model), e.g. from :func:`ensemblekit.metrics.inference_flops`.
        train_set_size: Number of images in the full training set.

    Example:
        >>> meter = TrainCostMeter(single_forward_flops=1e6, train_set_size=100)
        >>> meter.start_stage("train")
        >>> meter.add_step(images=100, forward_flops_per_image=1e6)
        >>> meter.summary()["train_epoch_equivalents"]
        1.0
    """

    def __init__(self, single_forward_flops: float, train_set_size: int) -> None:
        if not single_forward_flops > 0:
            raise ValueError(f"single_forward_flops must be > 0, got {single_forward_flops}")
        if int(train_set_size) != train_set_size or train_set_size < 1:
            raise ValueError(f"train_set_size must be a positive integer, got {train_set_size}")
        self.single_forward_flops = float(single_forward_flops)
        self.train_set_size = int(train_set_size)
        self._stages: dict[str, dict[str, float | int]] = {}
        self._current: str | None = None

    @property
    def current_stage(self) -> str | None:
        """The name of the stage being charged (``None`` before the first one)."""
        return self._current

    def start_stage(self, name: str) -> None:
        """Charge subsequent steps and time to stage ``name`` (created if new, continued if it exists)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"stage name must be a non-empty string, got {name!r}")
        self._stages.setdefault(name, {"train_flops": 0.0, "train_seconds": 0.0, "images_seen": 0})
        self._current = name

    def _stage(self) -> dict[str, float | int]:
        if self._current is None:
            self.start_stage(DEFAULT_STAGE)
        assert self._current is not None
        return self._stages[self._current]

    def add_step(self, images: int, forward_flops_per_image: float, backward: bool = True) -> None:
        """Charge one step: ``images · forward_flops_per_image · (3 if backward else 1)`` FLOPs.

        Args:
            images: Images (rows) processed in the step, counting each repetition (MIMO batch
                repetition, per-member copies) as the network sees it.
            forward_flops_per_image: Forward FLOPs per image of the network trained in this step.
            backward: ``False`` for forward-only passes charged to training (BN refresh, evaluation
                passes needed by the method).
        """
        if int(images) != images or images < 0:
            raise ValueError(f"images must be a non-negative integer, got {images}")
        if not forward_flops_per_image >= 0:
            raise ValueError(f"forward_flops_per_image must be >= 0, got {forward_flops_per_image}")
        stage = self._stage()
        stage["train_flops"] += int(images) * float(forward_flops_per_image) * (3.0 if backward else 1.0)
        stage["images_seen"] += int(images)

    def add_time(self, seconds: float) -> None:
        """Charge ``seconds`` of wall-clock training time to the current stage."""
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self._stage()["train_seconds"] += float(seconds)

    @contextmanager
    def timer(self) -> Iterator[None]:
        """Context manager charging the wall time of its body (``time.perf_counter``) to the current stage."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add_time(time.perf_counter() - start)

    def _totals(self, flops: float, seconds: float, images: int) -> dict[str, float | int]:
        return {
            "train_flops": float(flops),
            "train_epoch_equivalents": float(flops) / (3.0 * self.single_forward_flops * self.train_set_size),
            "train_seconds": float(seconds),
            "images_seen": int(images),
        }

    def summary(self) -> dict[str, Any]:
        """Totals and per-stage totals (in stage order) of FLOPs, epoch equivalents, seconds and images.

        Returns:
            ``{"train_flops", "train_epoch_equivalents", "train_seconds", "images_seen", "stages"}`` where
            ``stages`` maps each stage name to a dict of the same four quantities.
        """
        stages = {
            name: self._totals(s["train_flops"], s["train_seconds"], int(s["images_seen"]))
            for name, s in self._stages.items()
        }
        total = self._totals(
            sum(s["train_flops"] for s in self._stages.values()),
            sum(s["train_seconds"] for s in self._stages.values()),
            sum(int(s["images_seen"]) for s in self._stages.values()),
        )
        return {**total, "stages": stages}

    def state_dict(self) -> dict[str, Any]:
        """The meter's state as plain Python types (safe for ``torch.load(weights_only=True)``)."""
        return {
            "version": _STATE_VERSION,
            "single_forward_flops": self.single_forward_flops,
            "train_set_size": self.train_set_size,
            "current_stage": self._current,
            "stages": [
                {
                    "name": name,
                    "train_flops": float(s["train_flops"]),
                    "train_seconds": float(s["train_seconds"]),
                    "images_seen": int(s["images_seen"]),
                }
                for name, s in self._stages.items()
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (including the reference FLOPs and training-set size).

        Raises:
            ValueError: If ``state`` is not a state of this class.
        """
        try:
            if state["version"] != _STATE_VERSION:
                raise ValueError(f"unsupported TrainCostMeter state version {state['version']!r}")
            stages = {
                str(s["name"]): {
                    "train_flops": float(s["train_flops"]),
                    "train_seconds": float(s["train_seconds"]),
                    "images_seen": int(s["images_seen"]),
                }
                for s in state["stages"]
            }
            restored = TrainCostMeter(state["single_forward_flops"], state["train_set_size"])
            current = state["current_stage"]
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a TrainCostMeter state: {error!r}") from None
        if current is not None and current not in stages:
            raise ValueError(f"TrainCostMeter state names current stage {current!r} but has no such stage")
        self.single_forward_flops = restored.single_forward_flops
        self.train_set_size = restored.train_set_size
        self._stages = stages
        self._current = current
